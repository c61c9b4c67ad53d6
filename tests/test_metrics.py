"""Tests of studio.engine.metrics: counts, sizes, sparsity, latency and measure()."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from studio.engine.errors import JobCancelled, StudioError
from studio.engine.events import CancelToken, Phase, Progress, run_to_end
from studio.engine.metrics import (
    LatencyResult,
    ModelMetrics,
    compressed_size_bytes,
    count_macs,
    count_params,
    decode_compressed,
    dense_size_bytes,
    encode_compressed,
    measure,
    measure_latency,
    sparsity,
)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def prune_unstructured(model: nn.Module, share: float) -> nn.Module:
    """Zero the smallest-magnitude ``share`` of every conv/linear weight."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                w = m.weight
                k = int(share * w.numel())
                threshold = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= threshold] = 0
    return model


def test_params_and_macs_of_a_single_conv_and_linear():
    conv = nn.Conv2d(3, 8, 3, padding=1)              # 8·3·3·3 weights + 8 biases
    assert count_params(conv) == 8 * 27 + 8
    # One MAC per weight per output pixel, plus the bias add per output element.
    assert count_macs(conv, (3, 10, 10)) == 8 * 10 * 10 * 27 + 8 * 10 * 10
    strided = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False, groups=2)   # 5x5 output
    assert count_params(strided) == 6 * 2 * 9
    assert count_macs(strided, (4, 10, 10)) == 6 * 5 * 5 * 2 * 9
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert count_params(linear) == 12 * 5 + 5
    assert count_macs(linear, (3, 2, 2)) == 12 * 5 + 5


def test_shared_parameters_count_once():
    layer = nn.Linear(4, 4)
    assert count_params(nn.Sequential(layer, nn.ReLU(), layer)) == 20


@pytest.mark.filterwarnings("ignore::FutureWarning")   # torch.jit.trace is deprecated, still used in the wild
def test_macs_fall_back_for_torchscript():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    scripted = torch.jit.trace(conv, torch.randn(1, 3, 10, 10))
    assert count_macs(scripted, (3, 10, 10)) == 8 * 10 * 10 * 27


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_macs_wrong_input_size_is_a_clear_error():
    with pytest.raises(StudioError, match="input"):
        count_macs(torch.jit.trace(nn.Conv2d(3, 8, 3), torch.randn(1, 3, 8, 8)), (5, 8, 8))


def test_sparsity_counts_conv_and_linear_zeros_only():
    model = small_cnn()
    assert sparsity(model) == 0.0
    with torch.no_grad():
        model[0].weight.zero_()                         # 432 of 432 + 4608 + 320 weights
        model[1].weight.zero_()                         # BatchNorm: not counted
    assert sparsity(model) == pytest.approx(432 / (432 + 4608 + 320))
    assert sparsity(nn.ReLU()) == 0.0


def test_dense_size_matches_torch_save():
    model = small_cnn()
    floats = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    size = dense_size_bytes(model)
    assert floats * 4 < size < floats * 4 + 20_000        # the payload plus pickle/zip overhead


def test_compressed_size_sparse_vs_dense():
    dense = nn.Sequential(nn.Conv2d(16, 64, 3), nn.Conv2d(64, 64, 3), nn.Flatten(), nn.Linear(64, 10))
    torch.manual_seed(0)
    d_dense, c_dense = dense_size_bytes(dense), compressed_size_bytes(dense)
    assert 0.5 * d_dense < c_dense < 1.2 * d_dense          # random floats barely compress
    sparse = prune_unstructured(copy.deepcopy(dense), 0.9)
    assert sparsity(sparse) == pytest.approx(0.9, abs=0.01)
    assert dense_size_bytes(sparse) == d_dense              # torch.save stores zeros too
    c_sparse = compressed_size_bytes(sparse)
    # 10 % of the values at 4 bytes + 1 index byte each ≈ 12.5 % of dense.
    assert c_sparse < 0.2 * d_dense


def test_sizes_stream_and_match_the_whole_encoding():
    # Counted as they stream (a 600 M-parameter model held three copies of its weights while
    # its size was measured), to the same bytes as writing them out whole.
    import io
    model = prune_unstructured(small_cnn(), 0.5)
    assert compressed_size_bytes(model) == len(encode_compressed(model))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert dense_size_bytes(model) == buffer.getbuffer().nbytes


def test_compressed_encoding_is_lossless():
    model = prune_unstructured(small_cnn(), 0.95)
    with torch.no_grad():
        model[3].weight.view(-1)[:1000] = 0                # long zero runs need filler entries
        model[3].weight.view(-1)[1000] = 0.5
    model[1].num_batches_tracked += 3
    decoded = decode_compressed(encode_compressed(model))
    original = model.state_dict()
    assert decoded.keys() == original.keys()
    for key, tensor in original.items():
        assert decoded[key].dtype == tensor.dtype and torch.equal(decoded[key], tensor), key


def test_latency_reports_positive_numbers():
    result = measure_latency(small_cnn(), (3, 16, 16), batch_size=2, warmup=1, runs=5, threads=1)
    assert isinstance(result, LatencyResult)
    assert result.runs == 5 and result.batch_size == 2 and result.device == "cpu"
    assert 0 < result.median_ms <= result.p90_ms
    if not torch.cuda.is_available():
        with pytest.raises(StudioError):
            measure_latency(small_cnn(), (3, 16, 16), device="cuda")


def test_measure_returns_everything_and_leaves_model_alone():
    model = small_cnn()
    model.train()
    before = copy.deepcopy(model.state_dict())
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(40, 3, 16, 16), torch.randint(0, 10, (40,)))
    events = []
    result = run_to_end(measure(model, (3, 16, 16), batch_sizes=(1, 4), eval_set=data), events.append)
    assert isinstance(result, ModelMetrics)
    assert result.params == count_params(model)
    assert result.macs == count_macs(model, (3, 16, 16)) > 0
    assert result.dense_bytes > result.params * 4 * 0.9
    assert result.compressed_bytes > 0 and result.sparsity == 0.0
    assert set(result.latency) == {"cpu/bs1", "cpu/bs4"}
    assert all(v["median_ms"] > 0 for v in result.latency.values())
    assert 0.0 <= result.top1 <= result.top5 <= 1.0
    assert events[0] == Phase("measure")
    steps = [e for e in events if isinstance(e, Progress) and e.message != "evaluating"]
    assert [e.done for e in steps] == list(range(1, 7)) and steps[-1].total == 6
    json.dumps(result.to_dict())                            # plain data all the way down
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_measure_without_eval_and_cancel():
    result = run_to_end(measure(small_cnn(), (3, 8, 8)))
    assert result.top1 is None and result.top5 is None and set(result.latency) == {"cpu/bs1"}
    token = CancelToken()
    token.cancel()
    with pytest.raises(JobCancelled):
        run_to_end(measure(small_cnn(), (3, 8, 8), token=token))
