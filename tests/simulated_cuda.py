"""The CUDA fast path run on a CPU against a simulated GPU, to find what only a GPU would show:
a host tensor meeting a device tensor in an operation (a device mismatch), and a host read of a
device value inside a training step (a synchronisation that stalls the GPU).

Every tensor on "cuda" is a FakeTensor (shape, dtype, device, no data), operated on by
torch's FakeTensorMode; operations on host tensors alone run for real, so the host's side (the
sampler, the parameter draws, the dataset) computes as it does on a GPU machine. While
`reads.allowed` is False (inside the training steps) these are refused: reading a device tensor on
the host (.item(), .tolist(), .cpu(), .numpy(), bool(), ...), and copying a host tensor to the
device from pageable memory, which may wait for everything queued on the GPU (s4al copies through
data.batches.host_to_device, which pins). Allowed, reads are counted and answered with ones (a
confusion matrix of ones scores every class). Writing a host tensor into a device one by indexing
is always refused (a copy from pageable memory).

Not simulated, so left to the GPU tests: backward (autograd's engine needs a CUDA context; the
cases below give each parameter a gradient of its shape instead), the fused SGD step (no kernel
without CUDA), CUDA graphs, the values themselves. Not seen: torch.cuda.synchronize, events and
streams (stubs that do nothing), a device-to-host copy_ into an existing host tensor.

Run as `python tests/simulated_cuda.py CASE`; it prints one JSON line (tests/test_simulated_cuda.py).
The patches are global, so it runs in a process of its own."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch._subclasses import fake_tensor
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

MODE = FakeTensorMode(allow_non_fake_inputs=True)


@dataclass
class Reads:
    allowed: bool = False
    seen: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # (how, shape) of each read allowed


reads = Reads()


class Refused(Exception):
    """What a GPU would not show on a CPU: a host read or a pageable copy where none may be."""


def on_device(t: torch.Tensor) -> FakeTensor:
    """A fake copy of `t` on cuda:0."""
    if isinstance(t, FakeTensor):
        return t
    with unset_fake_temporarily():
        meta = t.detach().to("meta")
    return FakeTensor(MODE, meta, torch.device("cuda", 0))


class DeviceOpsFaked(TorchDispatchMode):
    """Operations touching a device tensor, or making one, run in the fake mode; the others for real."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = tree_leaves((args, kwargs))
        if any(isinstance(x, FakeTensor) or isinstance(x, torch.device) and x.type == "cuda" for x in leaves):
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
                _refuse_pageable(leaves)
            with MODE:
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def _refuse_pageable(leaves: list) -> None:
    """A copy to the device of a host tensor (not a 0-dim scalar) that pin_memory did not make."""
    for x in leaves:
        if (not reads.allowed and isinstance(x, torch.Tensor) and not isinstance(x, FakeTensor) and x.dim()
                and not getattr(x, "simulated_pinned", False)):
            raise Refused(f"a host tensor {tuple(x.shape)} copied to the device from pageable memory")


def _pinned(t: torch.Tensor) -> torch.Tensor:
    t.simulated_pinned = True
    return t


class _Stub:
    """A CUDA event or stream: every method does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _stub_cuda_runtime() -> None:
    cuda = torch.cuda
    cuda.is_available = lambda: True
    cuda._lazy_init = lambda: None
    cuda.device_count = lambda: 1
    cuda.current_device = lambda: 0
    cuda.is_bf16_supported = lambda *args, **kwargs: True
    cuda.mem_get_info = lambda *args: (100 * 2**30, 140 * 2**30)
    cuda.get_device_name = lambda *args: "simulated"
    for name in ("memory_allocated", "memory_reserved", "max_memory_allocated"):
        setattr(cuda, name, lambda *args: 0)
    for name in ("reset_peak_memory_stats", "empty_cache", "set_device", "synchronize", "set_rng_state",
                 "manual_seed", "manual_seed_all"):
        setattr(cuda, name, lambda *args: None)
    cuda.get_rng_state = lambda *args: torch.zeros(16, dtype=torch.uint8)
    cuda.Event = cuda.Stream = _Stub
    cuda.current_stream = lambda *args: _Stub()
    cuda.stream = lambda *args: contextlib.nullcontext()
    FakeTensorMode.avoid_device_init = property(lambda self: True)  # no real CUDA call for a constant's copy
    fake_tensor.init_gpu_context = lambda device: None  # where CUDA looks available, a real tensor (torch 2.11)
    torch.Tensor.pin_memory = lambda self, *args: _pinned(self.clone())
    torch.Tensor.is_pinned = lambda self, *args: getattr(self, "simulated_pinned", False)


def _module_to_device() -> None:
    """Module.to(cuda) swaps each parameter and buffer for a fake one (torch's own swap refuses fakes)."""
    to = torch.nn.Module.to

    def module_to(self, *args, **kwargs):
        first = args[0] if args and isinstance(args[0], (str, torch.device)) else None
        target = kwargs.pop("device", first)
        if target is None or torch.device(target).type != "cuda":
            return to(self, *args, **kwargs) if target is None else to(self, target, *args[first is not None:], **kwargs)
        for module in self.modules():
            for name, p in module._parameters.items():
                if p is not None:
                    module._parameters[name] = torch.nn.Parameter(on_device(p), p.requires_grad)
            for name, b in module._buffers.items():
                if b is not None:
                    module._buffers[name] = on_device(b)
        rest = args[first is not None:]
        return to(self, *rest, **kwargs) if rest or kwargs else self

    torch.nn.Module.to = module_to
    torch.__future__.set_overwrite_module_params_on_conversion(True)


def _meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    if isinstance(x, (tuple, list)):
        return type(x)(_meta(i) for i in x)
    return x


def _sliced(t: torch.Tensor, index: tuple) -> torch.Tensor:
    """Basic indexing (ints, slices, Ellipsis, None) by dispatched, differentiable operations."""
    given = sum(1 for i in index if i is not None and i is not Ellipsis)
    spelled = [part for i in index for part in ([slice(None)] * (t.dim() - given) if i is Ellipsis else [i])]
    dim = 0
    for i in spelled:
        if i is None:
            t, dim = t.unsqueeze(dim), dim + 1
        elif isinstance(i, int):
            t = t.select(dim, i)
        else:
            start, stop, step = i.indices(t.shape[dim])
            t, dim = torch.ops.aten.slice.Tensor(t, dim, start, stop, step), dim + 1
    return t


def _indexing() -> None:
    """Python indexing sets a CUDA device guard (a real CUDA call) before dispatch: on fake tensors
    it is done by dispatched operations instead."""
    getitem, setitem = torch.Tensor.__getitem__, torch.Tensor.__setitem__

    def fake_getitem(self, index):
        if not isinstance(self, FakeTensor):
            return getitem(self, index)
        index = index if isinstance(index, tuple) else (index,)
        if all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in index):
            return _sliced(self, index)
        if not all(isinstance(i, torch.Tensor) or i == slice(None) for i in index):
            raise NotImplementedError(f"simulated indexing of {index}")
        return torch.ops.aten.index.Tensor(self, [i if isinstance(i, torch.Tensor) else None for i in index])

    def fake_setitem(self, index, value):
        if not isinstance(self, FakeTensor):
            return setitem(self, index, value)
        setitem(_meta(self), _meta(index), _meta(value))  # shapes checked; no values to write
        for part in tree_leaves((index, value)):
            if isinstance(part, torch.Tensor) and part.dim() and not isinstance(part, FakeTensor):
                # torch copies it, from pageable memory: a copy that may wait for the GPU's queue
                raise Refused(f"a host tensor {tuple(part.shape)} written into a device tensor by indexing")

    torch.Tensor.__getitem__, torch.Tensor.__setitem__ = fake_getitem, fake_setitem


def _host_ones(t: torch.Tensor) -> torch.Tensor:
    return torch.ones(t.shape, dtype=t.dtype)


def _host_reads() -> None:
    def guarded(name: str, answer):
        method = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if not isinstance(self, FakeTensor):
                return method(self, *args, **kwargs)
            if not reads.allowed:
                raise Refused(f"host read ({name}) of a device tensor {tuple(self.shape)}")
            reads.seen.append((name, tuple(self.shape)))
            return answer(self)

        setattr(torch.Tensor, name, read)
        if name in vars(FakeTensor):  # its own tolist reads element by element
            setattr(FakeTensor, name, read)

    guarded("numpy", lambda t: _host_ones(t).numpy())  # refuses bfloat16, as on a GPU
    guarded("tolist", lambda t: _host_ones(t).tolist())
    guarded("item", lambda t: 1)
    guarded("cpu", _host_ones)
    guarded("__bool__", lambda t: True)
    guarded("__float__", lambda t: 1.0)
    guarded("__int__", lambda t: 1)
    guarded("__index__", lambda t: 1)
    to = torch.Tensor.to

    def to_host(self, *args, **kwargs):
        first = args[0] if args and isinstance(args[0], (str, torch.device)) else None
        target = kwargs.get("device", first)
        if not isinstance(self, FakeTensor) or target is None or torch.device(target).type != "cpu":
            return to(self, *args, **kwargs)
        rest = {k: v for k, v in kwargs.items() if k not in ("device", "non_blocking", "copy")}
        host = self.cpu()
        return to(host, *args[first is not None:], **rest)

    torch.Tensor.to = to_host


def _saving() -> None:
    """torch.save writes each device tensor as a host tensor of ones (a checkpoint is not a read counted)."""
    save = torch.save

    def save_on_host(obj, *args, **kwargs):
        return save(tree_map(lambda x: _host_ones(x) if isinstance(x, FakeTensor) else x, obj),
                    *args, **kwargs)

    torch.save = save_on_host


def simulate_cuda() -> DeviceOpsFaked:
    """Installs the simulation (for the rest of the process) and returns its dispatch mode, to enter."""
    _stub_cuda_runtime()
    _module_to_device()
    _indexing()
    _host_reads()
    _saving()
    return DeviceOpsFaked()


# ---- the cases ------------------------------------------------------------------------------------
LEARNERS = {
    "default": {},
    "paper": {"distribution_alignment": "off", "class_normalised_confidence": False, "freeze_bn_on_unlabelled": False},
    "probabilities": {"distribution_alignment": "probabilities", "alignment_target": "labelled"},
    "plain_classmix": {"balanced_classmix": False},
    "supervised": {"enabled": False},
}


def _gradients_instead_of_backward() -> None:
    from s4al.train import graphs

    def backward(self, loss: torch.Tensor) -> None:
        if not loss.requires_grad:
            raise RuntimeError("the loss does not depend on the student's parameters")
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    graphs.StudentPasses.backward = backward


def with_answers(data):
    """`data` with two pool images answered in their top-left 16x16 region, as a later cycle trains."""
    from s4al.train.data import TrainData

    box = (0, 0, 16, 16)
    answers = {i: [(box, data.dataset.load_label(i)[:16, :16])] for i in data.pool[:2]}
    return TrainData(data.dataset, data.labelled, data.pool, answers)


def _trainer(run_dir: Path, ssl: dict | None = None, **train):
    """A tiny SSL trainer (eta 1) on the simulated GPU's fast path, two pool images answered; `ssl`
    and `train`: more settings of those sections."""
    from conftest import ssl_data, tiny_config
    from s4al.train.trainer import Trainer

    _gradients_instead_of_backward()
    cfg = tiny_config(ssl={"confidence_threshold": 0.0, **(ssl or {})},
                      train={"fast": "on", "device": "cuda", "cuda_graphs": False, **train})
    data, val = ssl_data(cfg)
    trainer = Trainer(cfg, with_answers(data), val, run_dir)
    trainer.optimizer.step = lambda *args, **kwargs: None  # the fused step has no kernel here
    return trainer


def training_steps(run_dir: Path) -> dict:
    """Every step of a tiny training per learner, two pool images answered in a region (with SSL:
    cold start, SSL, SSL with replay; without: the answered images join the labelled batches): the
    losses each step returns and where they are, the precision. Host reads and pageable copies are
    refused once the trainer and its device cache (made with the first batch) are."""
    out = {}
    for name, learner in LEARNERS.items():
        reads.allowed = True
        trainer = _trainer(run_dir / name, ssl=learner)
        batches = trainer.batches()
        first = next(batches)
        reads.allowed = False
        steps = []
        for batch in itertools.chain([first], batches):
            logs = trainer.train_step(trainer.step, *batch)
            trainer.step += 1
            steps.append({key: str(value.device) for key, value in logs.items()})
        out[name] = {"amp": trainer.amp, "fast": trainer.fast, "sgd": trainer.sgd_flags, "steps": steps}
    return out


def fit(run_dir: Path) -> dict:
    """The host reads of a whole fit (2 epochs, the second with SSL and replay, evaluated and
    checkpointed after each) with 2 and with 6 steps an epoch: (kind, shape) each, in order."""
    reads.allowed = True
    out = {}
    for steps in (2, 6):
        trainer = _trainer(run_dir / f"steps_{steps}", iters_per_epoch=steps, epochs=2)
        reads.seen.clear()
        trainer.fit()
        out[steps] = [list(read) for read in reads.seen]
    return out


def inference(run_dir: Path) -> dict:
    """Evaluation, pool scoring and Core-Set's features, from the device cache (train.fast on) and
    from loader workers (off): the host reads each makes."""
    from conftest import ssl_data, tiny_config
    from s4al.acquisition.pool import choose_images, score_cells
    from s4al.evaluate import evaluate
    from s4al.model import build_model

    cfg = tiny_config(train={"fast": "on", "device": "cuda"})
    data, val = ssl_data(cfg)
    device = torch.device("cuda")
    model = build_model(cfg.model, val.classes.num_classes).to(device).eval()
    pool = list(range(len(data.dataset)))
    reads.allowed = True
    out = {}
    for fast in ("on", "off"):
        runs = {"evaluation": lambda: evaluate(model, val, 4, device, fast=fast)}
        for metric in ("entropy", "margin", "least_confidence", "random"):
            active = cfg.active.model_copy(update={"metric": metric})
            runs[f"cells_{metric}"] = lambda a=active: score_cells(model, data.dataset, pool, {}, a, device, 0, fast=fast)
        for metric, level in (("entropy", "image"), ("coreset", "image")):
            active = cfg.active.model_copy(update={"metric": metric, "level": level})
            runs[f"images_{metric}"] = lambda a=active: choose_images(model, data.dataset, [], pool, 4, a, device, 0,
                                                                      fast=fast)
        for name, run in runs.items():
            reads.seen.clear()
            run()
            out[f"fast_{fast}_{name}"] = [list(read) for read in reads.seen]
    return out


def controls(run_dir: Path) -> dict:
    """What the simulation refuses, each case's error or None: a host tensor meeting a device one, a
    host read, a host tensor written into a device one, a copy from pageable memory."""
    def error(fn) -> str | None:
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - the error is the result
            return f"{type(err).__name__}: {err}"
        return None

    device = torch.zeros(4, 3, device="cuda")
    return {"host_meets_device": error(lambda: device + torch.ones(4, 3)),
            "host_scalar_meets_device": error(lambda: device + torch.tensor(2.0)),
            "host_read": error(lambda: bool((device > 0).any())),
            "host_index_write": error(lambda: device.__setitem__(slice(0, 2), torch.ones(2, 3))),
            "pageable_copy": error(lambda: torch.ones(4, 3).to("cuda", non_blocking=True)),
            "pinned_copy": error(lambda: torch.ones(4, 3).pin_memory().to("cuda", non_blocking=True))}


CASES = {"training": training_steps, "fit": fit, "inference": inference, "controls": controls}

if __name__ == "__main__":
    case, run_dir = sys.argv[1], Path(sys.argv[2])
    with simulate_cuda():
        result = CASES[case](run_dir)
    print(json.dumps(result))
