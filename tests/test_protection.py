"""Groups whose pruning breaks the model are found, left unpruned and named; the rest is pruned."""
import torch
from torch import nn

from studio.engine.events import Log, run_to_end
from studio.engine.jobs import DataSource, ModelSource, Recipe, run_recipe
from studio.engine.pruning import PruningPlan

DATA = "synthetic:classes=4,size=3x16x16,train=16,val=16"


class HardReshape(nn.Module):
    """A hard-coded view(-1, 8 * 4 * 4) before the head, as Inception-v4 writes view(-1, 1536)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=4, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.head(x.view(-1, 8 * 4 * 4))


def run(tmp_path, model_cls, name: str):
    file = tmp_path / f"{name}.py"
    file.write_text("import torch\nfrom torch import nn\n" + _source(model_cls))
    recipe = Recipe(model=ModelSource(f"{file}:{model_cls.__name__}", input_size=[3, 16, 16]),
                    data=DataSource(DATA, batch_size=8), plan=PruningPlan(rate=0.5), exports=["checkpoint"])
    events = []
    metrics = run_to_end(run_recipe(recipe, tmp_path / f"run-{name}"), events.append).metrics
    return metrics, events


def _source(cls) -> str:
    import inspect
    return inspect.getsource(cls)


def test_a_breaking_group_is_left_unpruned_and_the_rest_is_pruned(tmp_path):
    metrics, events = run(tmp_path, HardReshape, "reshape")
    protected = metrics["protected_groups"]
    assert [p["root"] for p in protected] == ["b"] and "no longer runs" in protected[0]["why"]
    assert any("Left unpruned: the group of b" in w for w in metrics["warnings"])
    assert any(isinstance(e, Log) and "finding the groups at fault" in e.message for e in events)
    assert metrics["after"]["params"] < metrics["before"]["params"]      # conv a was still pruned
    page = (tmp_path / "run-reshape" / "report.html").read_text()
    assert "Left unpruned, and why" in page and "no longer runs" in page


def test_a_model_that_prunes_cleanly_protects_nothing(tmp_path):
    recipe = Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(DATA.replace("3x16x16", "3x32x32")
                                                                          .replace("classes=4", "classes=10")),
                    plan=PruningPlan(rate=0.3), exports=["checkpoint"])
    assert run_to_end(run_recipe(recipe, tmp_path / "r")).metrics["protected_groups"] == []


def test_strict_refuses_with_the_names(tmp_path, capsys):
    from studio.cli import main
    file = tmp_path / "reshape.py"
    file.write_text("import torch\nfrom torch import nn\n" + _source(HardReshape))
    code = main(["prune", f"{file}:HardReshape", "--input-size", "3x16x16", "--rate", "0.5", "--data", DATA,
                 "--batch-size", "8", "--strict", "--export", "pt", "--out", str(tmp_path / "strict")])
    err = capsys.readouterr().err
    assert code != 0 and "Strict plan" in err and "the group of b" in err
    assert not (tmp_path / "strict").exists()


def test_a_plan_error_is_said_once_not_bisected(tmp_path):
    import pytest

    from studio.engine.errors import StudioError
    recipe = Recipe(model=ModelSource("cifar:resnet20"), data=DataSource(DATA.replace("3x16x16", "3x32x32")
                                                                          .replace("classes=4", "classes=10")),
                    plan=PruningPlan(rate=0.3, protected=["no_such_layer"]), exports=["checkpoint"])
    events = []
    with pytest.raises(StudioError, match="no_such_layer"):
        run_to_end(run_recipe(recipe, tmp_path / "r"), events.append)
    assert not any(isinstance(e, Log) and "finding the groups at fault" in e.message for e in events)


def test_listing_a_plan_s_groups_copies_no_weights(monkeypatch):
    # On a shape-only (meta) copy: a 600 M-parameter model needed a 2.6 GB copy and its
    # activations just to list its groups.
    from studio.engine.graph.shadows import Shadows
    from studio.engine.pruning.protection import plan_groups_and_ties
    asked = []
    real_get = Shadows.get
    monkeypatch.setattr(Shadows, "get", lambda self, meta: asked.append(meta) or real_get(self, meta))
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    groups, ties = plan_groups_and_ties(model, torch.zeros(1, 3, 16, 16), PruningPlan())
    assert asked == [True] and sorted(root for root, _ in groups) == ["0", "2"] and ties == []
