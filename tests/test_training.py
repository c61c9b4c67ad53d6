"""Tests of studio.engine.training: the training loop, its events, seeding, BN-L1, pause/cancel, evaluation, DDP."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from studio.engine.errors import JobCancelled, StudioError
from studio.engine.events import CancelToken, EpochEnd, Log, Phase, Progress, TrainStep, run_to_end
from studio.engine.training import (
    EvalResult,
    TrainConfig,
    TrainResult,
    evaluate,
    is_main_process,
    seed_everything,
    select_device,
    train,
)
from studio.engine.training.loop import _lr_factor

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 4


def make_data(n: int, seed: int = 0, noise: float = 1.0) -> TensorDataset:
    """Class-dependent random templates plus noise: learnable, but not at a glance."""
    g = torch.Generator().manual_seed(1234)           # the same templates for every split
    templates = torch.randn(CLASSES, 3, 8, 8, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = templates[y] + noise * torch.randn(n, 3, 8, 8, generator=g)
    return TensorDataset(x, y)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, CLASSES)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def tiny_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, lr=0.05, batch_size=32, device="cpu", seed=0)
    base.update(kw)
    return TrainConfig(**base)


def drain(gen):
    events = []
    result = run_to_end(gen, events.append)
    return events, result


# --------------------------------------------------------------------------- learning and events

def test_training_learns_and_events_are_consistent():
    train_set, val_set = make_data(512, seed=1), make_data(256, seed=2)
    model = tiny_net()
    before_events, before = drain(evaluate(model, val_set, batch_size=64))
    epochs, steps = 3, 16                              # 512 / 32 images per step
    events, result = drain(train(model, train_set, val_set, cfg(epochs=epochs, lr=0.02)))

    assert isinstance(result, TrainResult)
    assert isinstance(events[0], Phase) and events[0].name == "fine-tune"
    assert any(isinstance(e, Log) for e in events)
    train_steps = [e for e in events if isinstance(e, TrainStep)]
    ends = [e for e in events if isinstance(e, EpochEnd)]
    assert len(train_steps) == epochs * steps
    assert [(s.epoch, s.step) for s in train_steps] == [(ep, st) for ep in range(epochs) for st in range(steps)]
    assert all(s.steps_per_epoch == steps and s.images_per_s > 0 for s in train_steps)
    assert [e.epoch for e in ends] == list(range(epochs))
    # Each EpochEnd comes right after the last step of its epoch (validation Progress in between).
    for end in ends:
        idx = events.index(end)
        last_step = max(i for i, e in enumerate(events) if isinstance(e, TrainStep) and e.epoch == end.epoch)
        assert all(isinstance(e, Progress) for e in events[last_step + 1:idx])

    # Cosine: starts at the base lr and only goes down, to near zero.
    lrs = [s.lr for s in train_steps]
    assert lrs[0] == pytest.approx(0.02)
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] < 0.02 * 0.01

    # It learned: lower loss, far above chance (25 %) on held-out data.
    assert ends[-1].train_loss < ends[0].train_loss
    assert result.final.top1 > 0.8 > before.top1 + 0.3
    assert result.final.loss < before.loss
    assert ends[-1].val_top1 == pytest.approx(result.final.top1)
    assert result.final.samples == 256
    assert len(result.history) == epochs and result.history[-1]["val_top1"] == result.final.top1
    assert result.images_per_s > 0 and result.seconds > 0
    assert not model.training


def test_max_steps_warmup_and_eval_every():
    events, result = drain(train(tiny_net(), make_data(256), make_data(64, seed=3),
                                 cfg(epochs=3, max_steps_per_epoch=3, warmup_epochs=1,
                                     schedule="constant", eval_every=2)))
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert len(steps) == 9 and all(s.steps_per_epoch == 3 for s in steps)
    # Linear warm-up over the first epoch, then constant.
    assert [s.lr for s in steps[:4]] == pytest.approx([0.05 / 3, 0.05 * 2 / 3, 0.05, 0.05])
    ends = [e for e in events if isinstance(e, EpochEnd)]
    # Validation on epoch 2 (eval_every) and on the last epoch.
    assert [e.val_top1 is not None for e in ends] == [False, True, True]
    assert result.final is not None


def test_lr_schedules():
    total = 100
    cos = [_lr_factor("cosine", s, total, 0) for s in range(total)]
    assert cos[0] == 1.0 and cos[50] == pytest.approx(0.5) and cos[-1] < 0.001
    one = [_lr_factor("onecycle", s, total, 0) for s in range(total)]
    peak = max(range(total), key=one.__getitem__)
    assert one[0] == pytest.approx(1 / 25) and one[peak] == pytest.approx(1.0) and 25 <= peak <= 35
    assert one[-1] < 0.001
    assert {_lr_factor("constant", s, total, 0) for s in range(total)} == {1.0}


def test_seeded_runs_are_identical_and_seed_matters():
    data = make_data(192)
    runs = []
    for seed in (7, 7, 8):
        model = tiny_net()
        drain(train(model, data, None, cfg(epochs=1, seed=seed)))
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_bn_l1_shrinks_batchnorm_scales():
    data = make_data(256)
    norms = {}
    for lam in (0.0, 0.05):
        model = tiny_net()
        drain(train(model, data, None, cfg(epochs=2, bn_l1=lam, weight_decay=0.0)))
        norms[lam] = model.bn.weight.detach().abs().sum().item()
    # 16 steps at lr ≤ 0.05 with λ = 0.05 pull each of the 8 scales down by roughly lr·λ per step.
    assert norms[0.05] < norms[0.0] - 0.05


def test_bn_l1_without_batchnorm_warns():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, CLASSES))
    events, _ = drain(train(model, make_data(64), None, cfg(epochs=1, bn_l1=1e-4)))
    assert any(isinstance(e, Log) and e.level == "warning" and "bn_l1" in e.message for e in events)


def test_adam_onecycle_label_smoothing_channels_last_force():
    model = tiny_net()
    events, result = drain(train(model, make_data(256), make_data(64, seed=4),
                                 cfg(epochs=2, optimizer="adam", lr=0.003, schedule="onecycle",
                                     label_smoothing=0.1, channels_last="force")))
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert result.final.top1 > 0.5


# --------------------------------------------------------------------------- pause and cancel

def test_pause_blocks_and_resume_finishes():
    token = CancelToken()
    events: list = []
    reached, go = threading.Event(), threading.Event()

    def on_event(e):
        events.append(e)
        if isinstance(e, TrainStep) and e.step == 1 and e.epoch == 0:
            reached.set()
            go.wait(5)

    outcome = {}

    def worker():
        outcome["result"] = run_to_end(train(tiny_net(), make_data(320), None,
                                             cfg(epochs=1, batch_size=16), token=token), on_event)

    thread = threading.Thread(target=worker)
    thread.start()
    assert reached.wait(30)
    token.pause()
    go.set()
    time.sleep(0.1)
    count = sum(isinstance(e, TrainStep) for e in events)
    time.sleep(0.3)
    assert thread.is_alive()
    assert sum(isinstance(e, TrainStep) for e in events) == count == 2
    token.resume()
    thread.join(30)
    assert not thread.is_alive()
    assert sum(isinstance(e, TrainStep) for e in events) == 20
    assert isinstance(outcome["result"], TrainResult)


def test_cancel_stops_within_one_batch():
    token = CancelToken()
    events = []
    model = tiny_net()

    def on_event(e):
        events.append(e)
        if isinstance(e, TrainStep) and e.step == 1:
            token.cancel()

    with pytest.raises(JobCancelled):
        run_to_end(train(model, make_data(320), None, cfg(epochs=1, batch_size=16), token=token), on_event)
    assert sum(isinstance(e, TrainStep) for e in events) == 2
    assert not model.training   # left in eval mode even when cancelled


# --------------------------------------------------------------------------- evaluate

class TableModel(nn.Module):
    """Returns a fixed row of logits per sample; the sample index is the input value."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x):
        return self.table[x[:, 0].long()]


def test_evaluate_top1_top5_and_loss_on_known_outputs():
    table = torch.tensor([[7., 6, 5, 4, 3, 2, 1]]).repeat(4, 1)   # ranking: 0 > 1 > ... > 6
    labels = torch.tensor([0, 4, 5, 1])            # top-1 hit, top-5 hit, miss (6th), top-5 hit
    x = torch.arange(4, dtype=torch.float32)[:, None]
    model = TableModel(table)
    model.train()
    events, result = drain(evaluate(model, TensorDataset(x, labels), batch_size=3))
    assert isinstance(result, EvalResult)
    assert result.top1 == pytest.approx(1 / 4)
    assert result.top5 == pytest.approx(3 / 4)
    assert result.loss == pytest.approx(nn.functional.cross_entropy(table, labels).item(), rel=1e-6)
    assert result.samples == 4
    assert events[0] == Phase("evaluate")
    assert [(e.done, e.total) for e in events if isinstance(e, Progress)] == [(1, 2), (2, 2)]
    assert model.training   # mode restored
    _, limited = drain(evaluate(model, TensorDataset(x, labels), batch_size=3, max_batches=1))
    # One batch of a seeded random sample: 3 of the 4 rows, so top-5 is 2/3 or 3/3.
    assert limited.samples == 3 and limited.top5 in (pytest.approx(2 / 3), pytest.approx(1.0))


def test_evaluate_accepts_a_loader_and_fewer_than_five_classes():
    data = make_data(50)
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    _, result = drain(evaluate(tiny_net(), loader))
    assert result.samples == 50 and result.top5 == 1.0   # 4 classes: top-5 always hits


# --------------------------------------------------------------------------- config and devices

def test_config_round_trip_and_validation():
    c = TrainConfig(epochs=5, lr=0.1, optimizer="adam", schedule="onecycle", bn_l1=1e-4,
                    channels_last="force", max_steps_per_epoch=10)
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert TrainConfig.from_dict({}) == TrainConfig()
    with pytest.raises(StudioError, match="Unknown training setting.*lrr"):
        TrainConfig.from_dict({"lrr": 0.1})
    bad = [dict(epochs=-1), dict(lr=0), dict(lr=-0.1), dict(batch_size=0), dict(optimizer="rmsprop"),
           dict(schedule="step"), dict(device="tpu"), dict(epochs=1.5), dict(lr="fast"),
           dict(momentum=1.0), dict(label_smoothing=1.0), dict(bn_l1=-1e-4), dict(channels_last="yes"),
           dict(max_steps_per_epoch=0), dict(eval_every=0), dict(lr=float("nan")), dict(amp="on")]
    for kw in bad:
        with pytest.raises(StudioError) as err:
            TrainConfig(**kw).validate()
        assert err.value.fix, kw
        assert next(iter(kw)) in err.value.problem
    TrainConfig(device="cuda:1", epochs=0).validate()


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        assert auto.type in ("cpu", "mps")
        with pytest.raises(StudioError, match="CUDA") as err:
            select_device("cuda")
        assert "cpu" in err.value.fix
    with pytest.raises(StudioError):
        select_device("tpu")


def test_seed_everything_repeats_random_numbers():
    seed_everything(3)
    a = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    seed_everything(3)
    b = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


# --------------------------------------------------------------------------- user-fixable failures

def test_nan_loss_says_lower_the_learning_rate():
    with pytest.raises(StudioError, match="loss became") as err:
        drain(train(tiny_net(), make_data(256), None, cfg(epochs=2, lr=1e30, momentum=0.0)))
    assert "learning rate" in err.value.fix


def test_empty_dataset_errors():
    empty = TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(StudioError, match="empty"):
        drain(train(tiny_net(), empty, None, cfg()))
    with pytest.raises(StudioError, match="empty"):
        drain(evaluate(tiny_net(), empty))


class OOMNet(TinyNet):
    def forward(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_suggests_smaller_batch():
    torch.manual_seed(0)
    with pytest.raises(StudioError, match="Out of memory") as err:
        drain(train(OOMNet(), make_data(64), None, cfg(batch_size=32)))
    assert "batch size" in err.value.fix and "16" in err.value.fix


def test_not_distributed_by_default():
    assert is_main_process()


# --------------------------------------------------------------------------- DDP

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
@pytest.mark.parametrize("feed", ["dataloader", "device-batches"])
def test_ddp_two_ranks_on_cpu(tmp_path, feed):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path)] + ([feed] if feed == "device-batches" else [])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    # Different initial weights per rank; DDP starts both from rank 0's and keeps them equal.
    assert r0["initial"] != r1["initial"]
    assert r0["state"] == r1["state"]
    assert r0["state"] != r0["initial"]
    assert r0["train_steps"] == (3 if feed == "dataloader" else 4) and r1["train_steps"] == 0
    assert r0["device_batches"] == (feed == "device-batches")
    assert r0["epoch_ends"] == 1 and r1["epoch_ends"] == 0
    # Validation sums are all-reduced: both ranks see the whole 40-image validation set.
    assert r0["val_samples"] == r1["val_samples"] == 40
    assert r0["val_top1"] == r1["val_top1"]
    assert math.isfinite(r0["train_loss"])
    # evaluate(): alone, split over ranks, and measure() on rank 0 only all agree.
    for r in (r0, r1):
        assert r["alone"]["samples"] == r["shared"]["samples"] == 40
        assert r["shared"]["top1"] == pytest.approx(r["alone"]["top1"])
        assert r["shared"]["loss"] == pytest.approx(r["alone"]["loss"], rel=1e-6)
    assert r0["alone"]["top1"] == pytest.approx(r0["val_top1"])
    assert r0["measured_top1"] == pytest.approx(r0["alone"]["top1"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_amp_channels_last_training():
    model = tiny_net()
    events, result = drain(train(model, make_data(512, seed=1), make_data(256, seed=2),
                                 cfg(epochs=3, lr=0.02, device="cuda", amp=True, channels_last=True)))
    steps = [e for e in events if isinstance(e, TrainStep)]
    # Stats are read one step late on CUDA: every step is still reported, in order.
    assert [(s.epoch, s.step) for s in steps] == [(ep, st) for ep in range(3) for st in range(16)]
    assert all(math.isfinite(s.loss) for s in steps)
    assert next(model.parameters()).is_cuda
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert result.final.top1 > 0.8


def test_limited_evaluation_samples_every_class_of_a_sorted_set():
    """A class-sorted validation set evaluated on 2 batches must not see only the first class."""
    from studio.engine.training.evaluate import eval_source as _eval_source
    labels = torch.arange(10).repeat_interleave(50)            # sorted by class, like ImageFolder
    data = torch.utils.data.TensorDataset(torch.zeros(500, 1), labels)
    loader = _eval_source(data, 16, torch.device("cpu"), max_batches=2)
    seen = torch.cat([y for _, y in loader])
    assert len(seen) == 32 and len(seen.unique()) >= 6
    again = torch.cat([y for _, y in _eval_source(data, 16, torch.device("cpu"), max_batches=2)])
    assert torch.equal(seen, again)


def test_resume_with_a_different_epoch_length_is_refused():
    """A saved state whose epochs had another number of steps (the data changed) cannot resume."""
    states = []
    drain(train(tiny_net(), make_data(64), None, cfg(epochs=2), save_state=states.append))
    assert [s["epoch"] for s in states] == [1, 2]
    with pytest.raises(StudioError, match="2 steps per epoch; this data gives 4"):
        drain(train(tiny_net(), make_data(128), None, cfg(epochs=2), resume=states[0]))
