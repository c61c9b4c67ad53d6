"""MACs before and after channel surgery, by torch-pruning's own counter hooks (`MacCounter`)."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn
from torch_pruning.utils import op_counter


def run_forward(model: nn.Module, inputs):
    """Call ``model`` on example inputs the way torch-pruning documents them."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


def batch_size_of(inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return max(len(inputs), 1) if inputs.dim() else 1
    if isinstance(inputs, (list, tuple)) and inputs:
        return batch_size_of(inputs[0])
    return 1


def _with_dim(shape: tuple, dim: int, size: int) -> tuple:
    shape = list(shape)
    shape[dim] = size
    return tuple(shape)


# Counted modules whose output has the channels of their input (elementwise ops and pools).
_CHANNEL_FOLLOWERS = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.Upsample,
                      nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                      nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)


class MacCounter:
    """MACs by torch-pruning's own counter hooks, without its deep copy and extra forward pass.

    These are the per-module hooks `tp.utils.count_ops_and_params` installs, summed the same
    way (a counted module's children are not counted again). ``record()`` counts the forward
    passes run inside it, which lets the count ride on the pass that dependency tracing
    makes anyway, and keeps each counted call's shapes and which counted call produced its
    input. After channel surgery ``replay()`` recounts from those shapes and the layers' new
    channel numbers (channel pruning changes nothing else), with no forward pass at all. It
    returns None where shapes cannot be derived so (an activation fed by an uncounted op, an
    RNN or attention layer); the caller then counts with a real forward pass.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.hooks = {**op_counter.MODULES_MAPPING, **op_counter.CUSTOM_MODULES_MAPPING}
        self.counted = [m for m in model.modules() if type(m) in self.hooks]
        self.calls: list = []   # (module, input shape, output shape, index of the producing call)
        self.replayable = True
        self.macs = 0

    def _total(self, module: nn.Module) -> int:
        if type(module) in self.hooks:
            return module.__flops__
        return sum(self._total(child) for child in module.children())

    @contextlib.contextmanager
    def _flops_attributes(self):
        """The hooks accumulate into ``module.__flops__``; set it up and leave no trace."""
        saved = {m: m.__dict__["__flops__"] for m in self.counted if "__flops__" in m.__dict__}
        for m in self.counted:
            m.__flops__ = 0
        try:
            yield
        finally:
            for m in self.counted:
                del m.__flops__
                if m in saved:
                    m.__flops__ = saved[m]

    @contextlib.contextmanager
    def record(self):
        """Count, and remember the shapes of, the forward passes run inside this context."""
        producers, alive = {}, []

        def remember(module, inputs, output):
            first = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            if first is None or not isinstance(output, torch.Tensor):
                self.replayable = False
                return
            self.calls.append((module, tuple(first.shape), tuple(output.shape), producers.get(id(first))))
            producers[id(output)] = len(self.calls) - 1
            alive.append(output)   # a live tensor's id cannot be reused by another one

        handles = []
        with self._flops_attributes():
            try:
                for m in self.counted:
                    handles.append(m.register_forward_hook(self.hooks[type(m)]))
                    handles.append(m.register_forward_hook(remember))
                yield self
                self.macs = self._total(self.model)
            finally:
                for h in handles:
                    h.remove()

    def _new_shapes(self, module, in_shape, out_shape, producer, new_out, channel_dim):
        """(input shape, output shape, channel dim) of a recorded call after surgery, or None."""
        if isinstance(module, nn.modules.conv._ConvNd) and len(in_shape) >= 3:
            return _with_dim(in_shape, 1, module.in_channels), _with_dim(out_shape, 1, module.out_channels), 1
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) \
                and len(in_shape) >= 2:
            return _with_dim(in_shape, 1, module.num_features), _with_dim(out_shape, 1, module.num_features), 1
        if isinstance(module, nn.GroupNorm) and len(in_shape) >= 2:
            return _with_dim(in_shape, 1, module.num_channels), _with_dim(out_shape, 1, module.num_channels), 1
        if isinstance(module, nn.Linear):
            return _with_dim(in_shape, -1, module.in_features), _with_dim(out_shape, -1, module.out_features), -1
        if isinstance(module, _CHANNEL_FOLLOWERS) and producer is not None \
                and len(new_out[producer]) == len(in_shape) == len(out_shape):
            dim = channel_dim[producer]
            return new_out[producer], _with_dim(out_shape, dim, new_out[producer][dim]), dim
        return None

    def replay(self) -> Optional[int]:
        """MACs of the model as it is now, from the recorded shapes; None if they cannot be derived."""
        if not self.replayable or not self.calls:
            return None
        new_out, channel_dim = [], []
        with self._flops_attributes():
            for module, in_shape, out_shape, producer in self.calls:
                shapes = self._new_shapes(module, in_shape, out_shape, producer, new_out, channel_dim)
                if shapes is None:
                    return None
                new_in, out, dim = shapes
                new_out.append(out)
                channel_dim.append(dim)
                # The hooks read only shapes and layer attributes, so shape-only tensors do.
                self.hooks[type(module)](module, (torch.empty(new_in, device="meta"),),
                                         torch.empty(out, device="meta"))
            return self._total(self.model)


def count_macs_forward(model: nn.Module, example_inputs) -> int:
    """MACs per example of ``model`` with a real forward pass, by torch-pruning's counter hooks."""
    counter = MacCounter(model)
    with counter.record(), torch.no_grad():
        run_forward(model, example_inputs)
    return int(counter.macs / batch_size_of(example_inputs))


def count_macs_after(counter: "MacCounter", model: nn.Module, example_inputs) -> int:
    """MACs per example after surgery: replayed from the traced shapes when possible."""
    macs = counter.replay()
    if macs is None:
        return count_macs_forward(model, example_inputs)
    return int(macs / batch_size_of(example_inputs))
