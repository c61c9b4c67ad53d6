"""CIFAR architectures and model loading: every spec kind, and every user error it reports."""
from __future__ import annotations

import urllib.error
import warnings

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch_pruning as tp

from studio.engine.errors import StudioError
from studio.engine.models import (
    CHECKPOINT_FORMAT,
    CIFAR_MODELS,
    build_architecture,
    infer_num_classes,
    list_cifar_models,
    list_torchvision_models,
    load_model,
)
from studio.engine.models import loading as model_loading


class PickledNet(nn.Module):
    """Defined at module level so a full pickle of it can be unpickled again."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(self.flat(self.pool(torch.relu(self.conv(x)))))


USER_FILE = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))

class NeedsArgs(nn.Module):
    def __init__(self, width):
        super().__init__()
"""


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _x(n=2, size=32):
    return torch.randn(n, 3, size, size)


def _same_output(a: nn.Module, b: nn.Module, size=32) -> bool:
    x = _x(size=size)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


# ---------------------------------------------------------------- architectures

@pytest.mark.parametrize("name", list(CIFAR_MODELS))
def test_cifar_model_forward_trace_and_dependency_graph(name):
    model = CIFAR_MODELS[name][0](7).eval()
    x = _x()
    with torch.no_grad():
        out = model(x)
        traced = torch.fx.symbolic_trace(model)
        assert torch.allclose(traced(x), out)
    assert out.shape == (2, 7)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    group = graph.get_pruning_group(first_conv, tp.prune_conv_out_channels, idxs=[0])
    assert len(group) >= 2  # the conv's own BN (or next layer) is coupled to it


@pytest.mark.parametrize("name", ["densenet40", "mobilenetv3_large", "vgg16_bn"])
def test_hard_couplings_prune_and_still_run(name):
    # concat (DenseNet), SE gate + residual (MobileNetV3), flatten into Linear (VGG)
    model = CIFAR_MODELS[name][0](10).eval()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, 3, 32, 32),
                                       importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.25, ignored_layers=[head])
    pruner.step()
    with torch.no_grad():
        assert model(_x()).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) < 0.8 * before


def test_param_counts_match_the_papers():
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert 0.26e6 < count(CIFAR_MODELS["resnet20"][0]()) < 0.28e6
    assert 0.84e6 < count(CIFAR_MODELS["resnet56"][0]()) < 0.87e6
    assert 0.95e6 < count(CIFAR_MODELS["densenet40"][0]()) < 1.1e6
    assert set(list_cifar_models()) == {"resnet20", "resnet56", "vgg16_bn", "vgg19_bn", "mobilenetv2",
                                        "mobilenetv3_large", "densenet40"}


def test_resnet_uses_projection_shortcuts_not_lambdas():
    model = CIFAR_MODELS["resnet20"][0]()
    shortcut = model.layer2[0].shortcut
    assert isinstance(shortcut[0], nn.Conv2d) and shortcut[0].kernel_size == (1, 1)
    assert isinstance(shortcut[1], nn.BatchNorm2d)


def test_infer_num_classes_reads_linear_or_conv_head():
    assert infer_num_classes(PickledNet(5)) == 5
    conv_head = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert infer_num_classes(conv_head) == 6
    assert infer_num_classes(nn.Sequential(nn.ReLU())) is None


# ---------------------------------------------------------------- built-in specs

def test_cifar_spec():
    loaded = load_model("cifar:resnet20", num_classes=100)
    assert (loaded.kind, loaded.arch, loaded.num_classes, loaded.input_size) == ("cifar", "cifar:resnet20", 100,
                                                                                 (3, 32, 32))
    assert not loaded.trained and "random" in loaded.weights_note and loaded.prunable
    assert not loaded.module.training
    assert "cifar:resnet20" in loaded.summary() and "100 classes" in loaded.summary()


def test_unknown_names_are_reported_with_the_valid_ones():
    with pytest.raises(StudioError, match="resnet20.*resnet56") as err:
        load_model("cifar:resnet21")
    assert "Unknown cifar model" in str(err.value)
    with pytest.raises(StudioError, match="Did you mean torchvision:resnet18"):
        load_model("torchvision:resnet19")
    with pytest.raises(StudioError, match="Did you mean cifar:resnet20"):
        load_model("resnet20")
    with pytest.raises(StudioError, match="cifar:NAME, torchvision:NAME or timm:NAME"):
        build_architecture("resnet56", 10)
    with pytest.raises(StudioError, match="No model given"):
        load_model("  ")


def test_torchvision_offline_is_random_init_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert "resnet18" in list_torchvision_models() and "fasterrcnn_resnet50_fpn" not in list_torchvision_models()
    loaded = load_model("torchvision:resnet18")
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert (loaded.kind, loaded.num_classes, loaded.input_size, loaded.trained) == ("torchvision", 1000,
                                                                                    (3, 224, 224), False)
    assert str(expected) in loaded.weights_note and "--download" in loaded.weights_note

    other_head = load_model("torchvision:resnet18", num_classes=10)
    assert other_head.num_classes == 10 and "10 classes were asked" in other_head.weights_note


def test_torchvision_download_failure_says_offline_and_where_to_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(StudioError) as err:
        load_model("torchvision:resnet18", download=True)
    message = str(err.value)
    assert "offline" in message
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message


def test_torchvision_weights_from_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = build_architecture("torchvision:resnet18", 1000)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")
    loaded = load_model("torchvision:resnet18")
    assert loaded.trained and "local cache" in loaded.weights_note
    assert _same_output(loaded.module, reference, size=64)

    # A full pickle in the cache is refused before torchvision would unpickle it.
    torch.save(PickledNet(), cache / "resnet18-f37072fd.pth")
    with pytest.raises(StudioError, match="damaged or is not resnet18's weights"):
        load_model("torchvision:resnet18")


# ---------------------------------------------------------------- .pt / .pth files

def test_state_dict_round_trip_with_arch(tmp_path):
    model = build_architecture("cifar:resnet20", 5).eval()
    # Nested under 'state_dict' with a DDP prefix, as training scripts often save it.
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": sd}, tmp_path / "w.pth")
    loaded = load_model(str(tmp_path / "w.pth"), arch="cifar:resnet20")
    assert (loaded.kind, loaded.arch, loaded.num_classes, loaded.trained) == ("state_dict", "cifar:resnet20", 5,
                                                                              True)
    assert _same_output(loaded.module, model)
    with pytest.raises(StudioError, match="5-class head: pass --num-classes 5"):
        load_model(str(tmp_path / "w.pth"), arch="cifar:resnet20", num_classes=100)


def test_state_dict_without_arch_asks_for_it(tmp_path):
    torch.save(build_architecture("cifar:resnet20", 10).state_dict(), tmp_path / "w.pt")
    with pytest.raises(StudioError, match="only weights.*--arch cifar:resnet20"):
        load_model(str(tmp_path / "w.pt"))


def test_wrong_arch_names_keys_and_suggests_the_right_one(tmp_path):
    torch.save(build_architecture("cifar:resnet20", 10).state_dict(), tmp_path / "w.pt")
    with pytest.raises(StudioError) as err:
        load_model(str(tmp_path / "w.pt"), arch="cifar:resnet56")
    message = str(err.value)
    assert "missing" in message and "layer1.3." in message
    assert "--arch cifar:resnet20" in message


def test_full_pickle_needs_trust(tmp_path):
    model = PickledNet(3).eval()
    torch.save(model, tmp_path / "full.pt")
    with pytest.raises(StudioError, match="arbitrary code.*--trust") as err:
        load_model(str(tmp_path / "full.pt"))
    assert "PickledNet" in str(err.value) and "state_dict" in str(err.value)
    loaded = load_model(str(tmp_path / "full.pt"), trust=True)
    assert (loaded.kind, loaded.num_classes, loaded.prunable, loaded.arch) == ("pickle", 3, True, None)
    assert _same_output(loaded.module, model)
    with pytest.raises(StudioError, match="predicts 3 classes but 5"):
        load_model(str(tmp_path / "full.pt"), trust=True, num_classes=5)


def test_torchscript_loads_but_is_not_prunable(tmp_path):
    model = PickledNet(4).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.trace(model, _x(1)), str(tmp_path / "ts.pt"))
    loaded = load_model(str(tmp_path / "ts.pt"))
    assert (loaded.kind, loaded.prunable, loaded.num_classes) == ("torchscript", False, 4)
    assert "TorchScript" in loaded.why_not_prunable and "--arch" in loaded.why_not_prunable
    assert _same_output(loaded.module, model)
    assert "not prunable" in loaded.summary()


def test_checkpoint_format_without_history(tmp_path):
    model = build_architecture("cifar:resnet20", 4).eval()
    ckpt = {"format": CHECKPOINT_FORMAT, "arch": "cifar:resnet20", "num_classes": 4, "input_size": [3, 40, 40],
            "state_dict": model.state_dict(), "pruning_history": [], "trained": False, "note": "smoke"}
    torch.save(ckpt, tmp_path / "c.pt")
    loaded = load_model(str(tmp_path / "c.pt"))
    assert (loaded.kind, loaded.arch, loaded.num_classes, loaded.input_size, loaded.trained) == (
        "state_dict", "cifar:resnet20", 4, (3, 40, 40), False)
    assert "smoke" in loaded.weights_note
    assert load_model(str(tmp_path / "c.pt"), input_size=(3, 32, 32)).input_size == (3, 32, 32)
    assert _same_output(loaded.module, model)


def test_pruned_checkpoint_is_rebuilt_through_export(tmp_path):
    model = build_architecture("cifar:resnet20", 10).eval()
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, 3, 32, 32),
                                       importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.3, ignored_layers=[model.fc])
    pruner.step()
    history = [[name, bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in pruner.pruning_history()]
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "cifar:resnet20", "num_classes": 10,
                "input_size": [3, 32, 32], "state_dict": model.state_dict(), "pruning_history": history,
                "trained": True, "note": "pruned 30%"}, tmp_path / "p.pt")
    loaded = load_model(str(tmp_path / "p.pt"))
    assert (loaded.kind, loaded.arch, loaded.num_classes) == ("pruned", "cifar:resnet20", 10)
    assert loaded.num_params == sum(p.numel() for p in model.parameters())
    assert _same_output(loaded.module, model)


def test_demo_missing_and_present(tmp_path, monkeypatch):
    path = tmp_path / "demo" / "model.pt"
    monkeypatch.setattr(model_loading, "demo_model_path", lambda: path)
    with pytest.raises(StudioError, match="make demo"):
        load_model("demo")
    path.parent.mkdir()
    model = build_architecture("cifar:resnet20", 10)
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "cifar:resnet20", "num_classes": 10,
                "input_size": [3, 32, 32], "state_dict": model.state_dict(), "pruning_history": [],
                "trained": True, "note": ""}, path)
    loaded = load_model("demo")
    assert (loaded.kind, loaded.arch, loaded.trained) == ("demo", "cifar:resnet20", True)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(StudioError, match="No model file"):
        load_model(str(tmp_path / "nope.pt"))
    with pytest.raises(StudioError, match="is a folder"):
        load_model(str(tmp_path))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(StudioError, match="empty"):
        load_model(str(tmp_path / "empty.pt"))
    (tmp_path / "junk.pt").write_bytes(b"hello, this is not a checkpoint")
    with pytest.raises(StudioError, match="not a PyTorch file or is damaged"):
        load_model(str(tmp_path / "junk.pt"))
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(StudioError, match="holds a list"):
        load_model(str(tmp_path / "list.pt"))
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(StudioError, match="no model weights"):
        load_model(str(tmp_path / "meta.pt"), arch="cifar:resnet20")


# ---------------------------------------------------------------- file.py:Class

def test_python_file_with_and_without_weights(tmp_path):
    src = tmp_path / "my_model.py"
    src.write_text(USER_FILE)
    bare = load_model(f"{src}:Net", num_classes=4)
    assert (bare.kind, bare.num_classes, bare.trained, bare.input_size) == ("python", 4, False, (3, 32, 32))

    torch.save(bare.module.state_dict(), tmp_path / "w.pth")
    weighted = load_model(f"{src}:Net:{tmp_path / 'w.pth'}", num_classes=4)
    assert weighted.trained and "w.pth" in weighted.weights_note
    assert _same_output(weighted.module, bare.module)

    with pytest.raises(StudioError, match="do not fit.*fc.weight.*num-classes"):  # 10-class head, 4-class weights
        load_model(f"{src}:Net:{tmp_path / 'w.pth'}")


def test_python_file_errors(tmp_path):
    src = tmp_path / "my_model.py"
    src.write_text(USER_FILE)
    with pytest.raises(StudioError, match="no class Missing.*Net"):
        load_model(f"{src}:Missing")
    with pytest.raises(StudioError, match="NeedsArgs.*failed.*width"):
        load_model(f"{src}:NeedsArgs")
    with pytest.raises(StudioError, match="No Python file"):
        load_model(f"{tmp_path / 'absent.py'}:Net")
    broken = tmp_path / "broken.py"
    broken.write_text("class Net(:\n")
    with pytest.raises(StudioError, match="syntax error at line 1"):
        load_model(f"{broken}:Net")
    failing = tmp_path / "failing.py"
    failing.write_text("import not_a_real_package_xyz\n")
    with pytest.raises(StudioError, match="ModuleNotFoundError.*not_a_real_package_xyz"):
        load_model(f"{failing}:Net")


def test_a_vit_is_given_the_input_it_was_built_for_not_the_weights_crop():
    # ViT-H/14's default weights are for 518x518, but built without them it expects 224x224.
    from torch import nn

    from studio.engine.models.loading import built_input
    vit = nn.Module()
    vit.image_size = 224
    assert built_input(vit, (3, 518, 518)) == (3, 224, 224)
    assert built_input(nn.Conv2d(3, 3, 1), (3, 299, 299)) == (3, 299, 299)
