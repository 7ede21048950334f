"""BatchNorm that normalises with the batch's statistics without moving its running ones."""

from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def frozen_bn_statistics(module: nn.Module, frozen: bool = True):
    """BatchNorm layers normalise with batch statistics (in train mode) but keep their running ones
    (momentum 0). With frozen False, nothing changes."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if frozen else []
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
