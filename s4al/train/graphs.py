"""The learner's passes, eager or replayed as CUDA graphs.

A step of the learner runs the same few passes with the same shapes thousands of times: the
student's forward and backward on the labelled, the mixed and the replay batch, the teacher's
forward on the unlabelled and replay images, and the building of the three batches on the device
(s4al/data/device_augment.py). Eager, each pass launches hundreds of small kernels one by one, and
on a GPU the host's launching takes longer than the kernels. Captured once as a CUDA graph
(torch.cuda.make_graphed_callables for the student, torch.cuda.graph for the others) a pass is
replayed with one launch; parameters, BatchNorm buffers and the device cache are read in place, so
the optimizer's and the EMA's in-place updates reach the replays.

A graph is captured per input shape (and, for the student, per BatchNorm mode: statistics moving,
or frozen for the unlabelled passes, whose momentum 0 the capture records) at its first use.
The capture's warm-up passes would move the BatchNorm statistics and the random state of dropout:
both are put back after it.
A capture that fails warns and leaves that pass eager for the rest of the run."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch import nn

from s4al.ssl.batchnorm import frozen_bn_statistics
from s4al.ssl.mean_teacher import MeanTeacher

WARMUP = 3  # eager passes on a side stream before a capture (cuDNN's choice of kernels, lazy state)


def _autocast(amp: bool):
    # cache_enabled=False: autocast's cache of casted weights must not outlive a graph capture
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp, cache_enabled=False)


class _StudentPass(nn.Module):
    """images -> fp32 logits of the network at the training precision, BatchNorm frozen or not."""

    def __init__(self, net: nn.Module, amp: bool, frozen: bool):
        super().__init__()
        self.net, self.amp, self.frozen = net, amp, frozen

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with _autocast(self.amp), frozen_bn_statistics(self.net, self.frozen):
            return self.net(images).float()


class StudentPasses:
    """`passes(images, frozen)`: the student's logits; `passes.backward(loss)` adds the loss's
    gradient to the parameters' .grad.

    With `graphs`, each (shape, frozen) is captured at its first call and replayed after. A
    replayed backward writes the gradients into buffers of its graph, which the graph's next replay
    overwrites: they are added to every parameter's own .grad (allocated here, zeroed in place by
    the trainer: zero_grad(set_to_none=False)) at once with one foreach add, where autograd would
    launch an add per parameter, or hand a buffer over as the .grad itself."""

    def __init__(self, net: nn.Module, student: nn.Module, amp: bool, graphs: bool):
        self.net, self.student, self.amp, self.graphs = net, student, amp, graphs
        self._eager = {frozen: _StudentPass(net, amp, frozen) for frozen in (False, True)}
        self._graphed: dict[tuple, nn.Module] = {}
        self._params = list(student.parameters())
        if graphs:
            for p in self._params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)

    def __call__(self, images: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        if not self.graphs:
            return self._eager[frozen](images)
        key = (tuple(images.shape), images.dtype, frozen)
        if key not in self._graphed:
            try:
                self._graphed[key] = self._capture(images, frozen)
            except RuntimeError as err:
                self.graphs = _capture_failed("student's passes", err)
                return self(images, frozen)
        return self._graphed[key](images)

    def release(self) -> None:
        """Drops the captured graphs and so their memory pools; a later call captures again."""
        self._graphed.clear()

    def backward(self, loss: torch.Tensor) -> None:
        if not self.graphs:
            loss.backward()
            return
        grads = torch.autograd.grad(loss, self._params)
        torch._foreach_add_([p.grad for p in self._params], grads)

    def _capture(self, images: torch.Tensor, frozen: bool) -> nn.Module:
        kept = [b.clone() for b in self.student.buffers()]
        # the warm-ups' dropout draws would move the random state the replays start from: a step
        # that captures (the first, or the first after a resume) would draw other masks than eager
        rng = torch.cuda.get_rng_state(images.device)
        try:
            return torch.cuda.make_graphed_callables(
                _StudentPass(self.student, self.amp, frozen), (images.detach().clone(),), num_warmup_iters=WARMUP,
                allow_unused_input=True,
            )
        finally:
            torch.cuda.set_rng_state(rng, images.device)
            with torch.no_grad():
                torch._foreach_copy_(list(self.student.buffers()), kept)


def _capture_failed(what: str, err: Exception) -> bool:
    warnings.warn(f"the {what} runs eagerly: its CUDA graph capture failed ({err}); "
                  "train.cuda_graphs: false skips the capture", stacklevel=3)
    return False


class Replayed:
    """`replayed(*tensors, key=...)`: fn(*tensors) (a tensor, or a dict or tuple of them), with
    `graphs` replayed from a CUDA graph per input shapes and `key`; the result is then the
    graph's output, overwritten by its next replay. fn must wait for nothing on the host and give
    outputs of the same shapes for inputs of the same shapes."""

    def __init__(self, fn: Callable, graphs: bool, what: str):
        self.fn, self.graphs, self.what = fn, graphs, what
        self._graphed: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...], Any]] = {}

    def __call__(self, *inputs: torch.Tensor, key: Hashable = None):
        if not self.graphs:
            return self.fn(*inputs)
        shapes = (key, *((tuple(x.shape), x.dtype) for x in inputs))
        if shapes not in self._graphed:
            try:
                self._graphed[shapes] = self._capture(inputs)
            except RuntimeError as err:
                self.graphs = _capture_failed(self.what, err)
                return self.fn(*inputs)
        graph, static_inputs, static_output = self._graphed[shapes]
        for static, x in zip(static_inputs, inputs):
            static.copy_(x)
        graph.replay()
        return static_output

    def release(self) -> None:
        """Drops the captured graphs and so their memory pools; a later call captures again."""
        self._graphed.clear()

    def _capture(self, inputs: tuple[torch.Tensor, ...]):
        static_inputs = tuple(x.detach().clone() for x in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                self.fn(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):  # the warm-up's stream: its lazily made handles are there
            static_output = self.fn(*static_inputs)
        return graph, static_inputs, static_output


def teacher_pass(teacher: MeanTeacher, amp: bool, graphs: bool) -> Replayed:
    """`teacher_pass(images)`: (N, C, H, W) fp32 class probabilities of the teacher, at the
    training precision."""

    def probabilities(images: torch.Tensor) -> torch.Tensor:
        with _autocast(amp):
            return teacher.probabilities(images)

    return Replayed(probabilities, graphs, "teacher's pass")
