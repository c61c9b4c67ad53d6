"""Export: every format reloads to the same outputs, failures leave no file, the model is untouched."""
from __future__ import annotations

import errno
import math
import sys

import pytest
import torch
import torch_pruning as tp
from torch import nn

from studio.engine.errors import JobCancelled, StudioError
from studio.engine.events import CancelToken, Log, Phase, Progress, run_to_end
from studio.engine.export import FORMATS, ExportRecord, export_model
from studio.engine.models import checkpoint as checkpoint_mod
from studio.engine.models import rebuild_from_checkpoint, save_checkpoint

ARCH = "test:tiny"
INPUT = (3, 8, 8)


class TinyNet(nn.Module):
    """Conv-BN stem, a residual block (coupled channels) and a classifier."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x + torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def build(arch: str, num_classes: int) -> nn.Module:
    assert arch == ARCH
    return TinyNet(num_classes)


def pruned_tiny():
    """A TinyNet with non-trivial BN statistics, pruned 50 % by torch-pruning; returns (model, history)."""
    torch.manual_seed(0)
    model = TinyNet()
    for bn in (model.bn1, model.bn2, model.bn3):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    model.eval()
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, *INPUT), importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
    return model, pruner.pruning_history()


@pytest.fixture(scope="module")
def tiny():
    return pruned_tiny()


def run_export(model, out_dir, history, *, formats=FORMATS, arch=ARCH, token=None, events=None):
    kwargs = {"token": token} if token is not None else {}
    gen = export_model(model, out_dir, formats=formats, example_input=torch.randn(1, *INPUT), arch=arch,
                       num_classes=5, input_size=list(INPUT), pruning_history=history, builder=build, **kwargs)
    return run_to_end(gen, None if events is None else events.append)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_all_formats_reload_to_the_same_outputs(tiny, tmp_path):
    model, history = tiny
    events = []
    records = run_export(model, tmp_path, history, events=events)

    assert [r.format for r in records] == list(FORMATS)
    assert all(isinstance(r, ExportRecord) for r in records)
    for r in records:
        assert r.bytes > 0 and r.bytes == (tmp_path / r.path.split("/")[-1]).stat().st_size
        assert r.max_abs_diff < 1e-4, r
    assert isinstance(events[0], Phase) and events[0].name == "export"
    assert [e.done for e in events if isinstance(e, Progress)] == [0, 1, 2, 3, 4]
    assert not list(tmp_path.glob("*.part"))

    x = torch.randn(4, *INPUT)   # a batch size none of the exports saw
    with torch.no_grad():
        expected = model(x)
    by_format = {r.format: r.path for r in records}

    full = torch.load(by_format["pt"], weights_only=False)
    traced = torch.jit.load(by_format["torchscript"])
    ckpt = torch.load(by_format["checkpoint"], weights_only=True)
    rebuilt = rebuild_from_checkpoint(ckpt, builder=build)
    with torch.no_grad():
        for reloaded in (full.eval(), traced, rebuilt):
            assert (reloaded(x) - expected).abs().max().item() < 1e-4

    import onnxruntime as ort
    session = ort.InferenceSession(by_format["onnx"], providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert abs(out - expected.numpy()).max() < 1e-4

    # the checkpoint holds plain data and rebuilds into exactly the pruned structure
    assert ckpt["format"] == "compression-studio/checkpoint" and ckpt["version"] == 1
    assert ckpt["arch"] == ARCH and ckpt["num_classes"] == 5 and ckpt["input_size"] == list(INPUT)
    assert ckpt["trained"] is True
    for name, is_out, idxs in ckpt["pruning_history"]:
        assert type(name) is str and type(is_out) is bool and all(type(i) is int for i in idxs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert rebuilt.conv1.out_channels == model.conv1.out_channels < 8


def test_checkpoint_round_trip_and_foreign_files(tiny, tmp_path):
    model, history = tiny
    path = tmp_path / "m.ckpt.pt"
    save_checkpoint(path, model, arch=ARCH, num_classes=5, input_size=INPUT, pruning_history=history,
                    trained=False, note="demo weights")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["trained"] is False and ckpt["note"] == "demo weights"
    rebuilt = rebuild_from_checkpoint(ckpt, builder=build)
    x = torch.randn(2, *INPUT)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)

    with pytest.raises(StudioError, match="not a Compression Studio checkpoint"):
        rebuild_from_checkpoint({"state_dict": {}}, builder=build)
    with pytest.raises(StudioError, match="newer"):
        rebuild_from_checkpoint({**ckpt, "version": 99}, builder=build)
    with pytest.raises(StudioError, match="do not fit"):
        rebuild_from_checkpoint({**ckpt, "pruning_history": []}, builder=build)   # unpruned shapes
    with pytest.raises(StudioError, match="architecture name"):
        save_checkpoint(tmp_path / "x.pt", model, arch=None, num_classes=5, input_size=INPUT, pruning_history=[])


def test_model_without_arch_skips_checkpoint_with_a_note(tiny, tmp_path):
    model, history = tiny
    events = []
    records = run_export(model, tmp_path, history, formats=("checkpoint", "pt"), arch=None, events=events)
    skipped, pt = records
    assert skipped.format == "checkpoint" and skipped.path == "" and skipped.bytes == 0
    assert math.isnan(skipped.max_abs_diff) and "architecture" in skipped.note
    assert any(isinstance(e, Log) and e.level == "warning" for e in events)
    assert not list(tmp_path.glob("*.ckpt.pt"))
    assert pt.format == "pt" and (tmp_path / "model.pt").exists() and pt.max_abs_diff < 1e-4


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tiny, tmp_path, monkeypatch):
    model, history = tiny
    old = tmp_path / "model.pt"
    old.write_bytes(b"older export")

    def save_then_fill_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a pickle")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fill_disk)
    with pytest.raises(StudioError, match="disk is full"):
        run_export(model, tmp_path, history, formats=("pt",))
    assert old.read_bytes() == b"older export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_export_that_does_not_reproduce_the_model_is_not_kept(tiny, tmp_path, monkeypatch):
    model, history = tiny
    monkeypatch.setattr(torch, "load", lambda *a, **k: TinyNet().eval())   # reload yields other weights
    with pytest.raises(StudioError, match="does not reproduce"):
        run_export(model, tmp_path, history, formats=("pt",))
    assert list(tmp_path.iterdir()) == []


def test_untraceable_model_becomes_a_studio_error(tmp_path):
    class Untraceable(nn.Module):
        def forward(self, x):
            return {"a": x.sum()} if x.sum() > 0 else [x]   # output type depends on the data

    with pytest.raises(StudioError, match="torchscript"):
        run_to_end(export_model(Untraceable(), tmp_path, formats=("torchscript",), example_input=torch.ones(1, 3),
                                arch=None, num_classes=1, pruning_history=[]))
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_lists_the_valid_ones(tiny, tmp_path):
    model, history = tiny
    with pytest.raises(StudioError) as err:
        run_export(model, tmp_path, history, formats=("pt", "tflite"))
    assert "tflite" in err.value.problem
    assert all(f in err.value.fix for f in FORMATS)
    assert list(tmp_path.iterdir()) == []


def test_model_is_not_mutated(tiny, tmp_path):
    model, history = tiny
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    try:
        run_export(model, tmp_path, history, formats=("pt", "checkpoint", "torchscript"))
        assert model.training and all(m.training for m in model.modules())
        assert [id(p) for p in model.parameters()] == params
        after = model.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    finally:
        model.eval()


def test_cancel_between_formats_keeps_finished_files_whole(tiny, tmp_path):
    model, history = tiny
    token = CancelToken()

    def cancel_after_first(event):
        if isinstance(event, Progress) and event.done == 1:
            token.cancel()

    gen = export_model(model, tmp_path, formats=("pt", "checkpoint", "torchscript"), example_input=torch.randn(1, *INPUT),
                       arch=ARCH, num_classes=5, input_size=INPUT, pruning_history=history, builder=build, token=token)
    with pytest.raises(JobCancelled):
        run_to_end(gen, cancel_after_first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    reloaded = torch.load(tmp_path / "model.pt", weights_only=False)
    x = torch.randn(2, *INPUT)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model(x), atol=1e-5)


def test_onnx_without_onnxruntime_is_recorded_not_failed(tiny, tmp_path, monkeypatch):
    model, history = tiny
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # makes `import onnxruntime` raise ImportError
    (record,) = run_export(model, tmp_path, history, formats=("onnx",))
    assert math.isnan(record.max_abs_diff) and "onnxruntime is not installed" in record.note
    assert (tmp_path / "model.onnx").stat().st_size == record.bytes > 0
    import onnx
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    assert onnx.load(str(tmp_path / "model.onnx")).opset_import[0].version >= 17


def test_onnx_falls_back_to_the_torchscript_exporter(tiny, tmp_path, monkeypatch):
    model, history = tiny
    real_export = torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("torch.export cannot trace this model")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    (record,) = run_export(model, tmp_path, history, formats=("onnx",))
    assert "TorchScript-based exporter" in record.note and "cannot trace this model" in record.note
    assert record.max_abs_diff < 1e-4   # checked on a batch of three: the batch axis is dynamic


def test_history_is_made_plain(tiny):
    class Wrapped:
        def __init__(self, i):
            self.idx = i
    plain = checkpoint_mod._plain_history([("a.b", 1, [torch.tensor(3), Wrapped(4)]), ["c", False, (5,)]])
    assert plain == [["a.b", True, [3, 4]], ["c", False, [5]]]
    with pytest.raises(StudioError, match="pruning history"):
        checkpoint_mod._plain_history([("only-a-name",)])


def test_an_export_that_needs_more_memory_than_is_free_says_so_before_writing(tmp_path, monkeypatch):
    import studio.engine.export.formats as formats
    monkeypatch.setattr(formats, "_free_memory", lambda: 1000)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    with pytest.raises(StudioError, match=r"needs about .* GB of free memory.*is free"):
        run_to_end(formats.export_model(model, tmp_path / "out", formats=["pt"], example_input=torch.zeros(1, 3, 8, 8),
                                        arch=None, num_classes=2, pruning_history=[]))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_onnx_is_skipped_with_a_reason_past_the_single_file_limit(tmp_path, monkeypatch):
    import studio.engine.export.formats as formats
    monkeypatch.setattr(formats, "ONNX_SINGLE_FILE_LIMIT", 10)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 2))
    records = run_to_end(formats.export_model(model, tmp_path, formats=["pt", "onnx"],
                                              example_input=torch.zeros(1, 3, 8, 8), arch=None, num_classes=2,
                                              pruning_history=[]))
    assert records[0].path and not records[1].path and "2 GB a single ONNX file" in records[1].note


def test_a_failing_format_is_recorded_and_the_others_are_still_written(tmp_path):
    class Lambda(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.fn = lambda x: x.mean((2, 3))   # pickle cannot save a lambda: the 'pt' file fails

        def forward(self, x):
            return self.fn(self.conv(x))

    events = []
    records = run_to_end(export_model(Lambda(), tmp_path, formats=("pt", "torchscript"),
                                      example_input=torch.zeros(1, 3, 8, 8), arch=None, num_classes=2,
                                      pruning_history=[]), events.append)
    assert not records[0].path and records[0].note.startswith("Failed: Exporting the model as pt failed")
    assert records[1].path and (tmp_path / "model.torchscript.pt").is_file()
    assert any(isinstance(e, Log) and "The other formats are still written" in e.message for e in events)


def test_a_model_pickle_cannot_save_is_written_as_torchscript_instead_of_lost(tmp_path):
    class Lambda(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.fn = lambda x: x.mean((2, 3))

        def forward(self, x):
            return self.fn(self.conv(x))

    records = run_to_end(export_model(Lambda(), tmp_path, formats=("pt",), example_input=torch.zeros(1, 3, 8, 8),
                                      arch=None, num_classes=2, pruning_history=[]))
    assert [r.format for r in records] == ["pt", "torchscript"] and not records[0].path
    assert records[1].note.startswith("Written instead of pt") and (tmp_path / "model.torchscript.pt").is_file()
