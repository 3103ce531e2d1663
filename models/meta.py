"""Modules built as empty shells: on the meta device, without their random initialisation."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

RANDOM_INITS = frozenset({nn.init.uniform_, nn.init.normal_, nn.init.kaiming_uniform_})  # what torch's layers run


class SkipRandomInit(TorchFunctionMode):
    """The random initialisers of torch's layers (Linear, Conv, Embedding) return their tensor untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RANDOM_INITS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Modules built inside hold meta tensors (no memory) and skip the random initialisation every torch layer
    runs in its constructor: their weights come from a checkpoint or a later fill. On meta tensors those
    initialisers compute nothing, yet cost about a millisecond a layer, and some import torch._dynamo (~1.5 s)."""
    with torch.device("meta"), SkipRandomInit():
        yield


def device_context(device: str | torch.device) -> contextlib.AbstractContextManager:
    """Where a builder creates its modules: on_meta() for the meta device, nothing to do for the default device
    (torch's device context would route every op of the constructors through Python), else that context."""
    device = torch.device(device)
    if device.type == "meta":
        return on_meta()
    return contextlib.nullcontext() if device == torch.get_default_device() else device
