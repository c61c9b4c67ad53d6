"""ONNX models in: a .onnx file converted by onnx2torch, then inspected, pruned and exported as usual."""
import pytest
import torch
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.events import run_to_end
from studio.engine.jobs import DataSource, ModelSource, Recipe, run_recipe
from studio.engine.models import load_model
from studio.engine.pruning import PruningPlan

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def exported(tmp_path) -> tuple:
    torch.manual_seed(0)
    model = Small().eval()
    path = tmp_path / "small.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 32, 32), str(path), dynamo=False, opset_version=17)
    return model, path


def test_an_onnx_file_opens_as_the_same_model(tmp_path):
    model, path = exported(tmp_path)
    loaded = load_model(str(path))
    assert loaded.kind == "onnx" and loaded.input_size == (3, 32, 32) and loaded.num_classes == 10
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), model(x), atol=1e-4)


def test_an_onnx_model_prunes_and_goes_back_to_onnx(tmp_path):
    _, path = exported(tmp_path)
    recipe = Recipe(model=ModelSource(str(path)), data=DataSource("synthetic:classes=10,size=3x32x32,train=32,val=32",
                                                                  batch_size=16),
                    plan=PruningPlan(rate=0.5), exports=["onnx"])
    metrics = run_to_end(run_recipe(recipe, tmp_path / "run")).metrics
    assert metrics["after"]["macs"] < metrics["before"]["macs"]
    again = load_model(str(tmp_path / "run" / "model.onnx"))     # the round trip: ONNX in, pruned ONNX out
    assert sum(p.numel() for p in again.module.parameters()) < sum(p.numel() for p in load_model(str(path)).module.parameters())


def test_an_op_the_converter_cannot_translate_is_named(tmp_path):
    from onnx import TensorProto, helper
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    with pytest.raises(StudioError, match="com.example::Frobnicate"):
        load_model(str(path))


def test_a_damaged_onnx_file_is_refused_clearly(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf at all")
    with pytest.raises(StudioError, match="not a readable ONNX model"):
        load_model(str(path))
