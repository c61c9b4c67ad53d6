"""The method interface: declared options are checked, inputs refused early, results returned as events end."""
import pytest
import torch
from torch import nn

from studio.engine.errors import StudioError
from studio.engine.events import CancelToken, Log, Progress, run_to_end
from studio.engine.methods import METHODS, Method, MethodInput, MethodResult, Option, get_method, register
from studio.engine.methods.base import list_methods


class ScaleLastLayer(Method):
    """A toy method: multiplies the last Linear's weight, on a copy, one event per step."""
    name = "test-scale"
    title = "Scale the last layer"
    paper = "none (a test method)"
    needs_data = True
    options = (Option("factor", "float", 2.0, "weight multiplier", minimum=0.0, maximum=10.0),
               Option("steps", "int", 2, "events to yield", minimum=1),
               Option("mode", "choice", "all", "which entries", choices=("all", "positive")),
               Option("verbose", "bool", False, "log each step"))

    def run(self, inputs, options):
        self.check_input(inputs)
        model = __import__("copy").deepcopy(inputs.model)
        for step in range(options["steps"]):
            inputs.token.check("test-scale")
            yield Progress("test-scale", step + 1, options["steps"])
            if options["verbose"]:
                yield Log(f"step {step + 1}")
        with torch.no_grad():
            model[-1].weight.mul_(options["factor"])
        return MethodResult(model=model, summary={"factor": options["factor"]})


@pytest.fixture
def registered():
    register(ScaleLastLayer)
    yield ScaleLastLayer
    METHODS.pop(ScaleLastLayer.name, None)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def test_a_registered_method_runs_on_a_copy(registered):
    net = model()
    before = net[-1].weight.clone()
    method = get_method("test-scale")
    events = []
    result = run_to_end(method.run(MethodInput(net, (3, 2, 2), data=object()),
                                   method.resolve_options({"factor": 3, "verbose": True})), events.append)
    assert torch.equal(net[-1].weight, before)                       # the caller's model is untouched
    assert torch.allclose(result.model[-1].weight, 3 * before)
    assert result.summary == {"factor": 3.0}
    assert [type(e).__name__ for e in events] == ["Progress", "Log", "Progress", "Log"]
    assert "test-scale" in list_methods()


def test_defaults_fill_missing_options(registered):
    assert ScaleLastLayer.resolve_options() == {"factor": 2.0, "steps": 2, "mode": "all", "verbose": False}


@pytest.mark.parametrize("given, message", [
    ({"factr": 2}, "has no option 'factr'"),
    ({"factor": 11}, "must be between 0.0 and 10.0"),
    ({"factor": "2"}, "must be a finite number"),
    ({"factor": float("nan")}, "must be a finite number"),
    ({"steps": 1.5}, "must be a whole number"),
    ({"steps": True}, "must be a whole number"),
    ({"steps": 0}, "must be at least 1"),
    ({"mode": "some"}, "is not one of its choices"),
    ({"verbose": 1}, "must be true or false"),
])
def test_bad_options_are_refused_by_name(registered, given, message):
    with pytest.raises(StudioError) as err:
        ScaleLastLayer.resolve_options(given)
    assert message in str(err.value) and "test-scale" in str(err.value)


def test_a_method_that_needs_data_refuses_none(registered):
    method = get_method("test-scale")
    with pytest.raises(StudioError, match="needs data"):
        run_to_end(method.run(MethodInput(model(), (3, 2, 2)), method.resolve_options()))


def test_cancel_stops_a_method_and_leaves_the_model(registered):
    net, token = model(), CancelToken()
    before = net[-1].weight.clone()
    token.cancel()
    method = get_method("test-scale")
    with pytest.raises(Exception) as err:
        run_to_end(method.run(MethodInput(net, (3, 2, 2), data=object(), token=token), method.resolve_options()))
    assert type(err.value).__name__ == "JobCancelled"
    assert torch.equal(net[-1].weight, before)


def test_unknown_method_names_a_close_one(registered):
    with pytest.raises(StudioError, match="Did you mean 'test-scale'"):
        get_method("test-scal")


def test_registration_refuses_bad_declarations():
    class Nameless(ScaleLastLayer):
        name = ""

    class BadDefault(ScaleLastLayer):
        name = "test-bad-default"
        options = (Option("factor", "float", -1.0, "weight multiplier", minimum=0.0),)

    class BadKind(ScaleLastLayer):
        name = "test-bad-kind"
        options = (Option("factor", "complex", 1.0, "?"),)

    for cls in (Nameless, BadDefault, BadKind):
        with pytest.raises((TypeError, StudioError)):
            register(cls)
        assert cls.name not in METHODS or not cls.name
