"""The learner's passes replayed as CUDA graphs (s4al/train/graphs.py) train as the eager passes do,
and stay off wherever they cannot run."""

import pytest
import torch
import torch.nn.functional as F

from conftest import needs_cuda, ssl_data, tiny_config
from s4al.train.graphs import StudentPasses
from s4al.train.trainer import Trainer


def ssl_trainer(tmp_path, device: str, graphs: bool, freeze_bn: bool = True) -> Trainer:
    cfg = tiny_config(ssl={"confidence_threshold": 0.0, "freeze_bn_on_unlabelled": freeze_bn},
                      train={"device": device, "epochs": 4, "cuda_graphs": graphs})
    return Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)


def test_graphs_and_their_kept_gradients_are_off_on_a_cpu(tmp_path):
    trainer = ssl_trainer(tmp_path, "cpu", graphs=True)
    assert trainer.fast is False and not trainer.replaying()
    assert trainer.grads_to_none and all(p.grad is None for p in trainer.student.parameters())


@needs_cuda
@pytest.mark.parametrize("frozen", [False, True])
def test_a_replayed_pass_gives_the_eager_logits_gradient_and_statistics(tmp_path, frozen):
    """One pass from one state and one seed (the same dropout masks), eager and replayed: the same
    logits, gradient and BatchNorm statistics up to bf16 and atomic-add noise, where a wrong graph
    (stale parameters, the other BatchNorm mode, a lost backward) would be off by its whole size.
    (Whole training runs are not compared: from random weights a few steps turn noise into
    differences of any size.)"""
    trainer = ssl_trainer(tmp_path, "cuda", graphs=True)
    student, (h, w) = trainer.student, trainer.cfg.train.crop_size
    eager = StudentPasses(student, student, trainer.amp, graphs=False)
    images = torch.rand(2, 3, h, w, device="cuda").contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, trainer.num_classes, (2, h, w), device="cuda")
    trainer.forward(images, frozen)  # the capture, before the comparison
    start = {k: v.clone() for k, v in student.state_dict().items()}
    out = []
    for passes in (eager, trainer.student_pass):
        student.load_state_dict(start)  # in place: the graph reads these tensors
        student.zero_grad(set_to_none=False)
        torch.manual_seed(0)
        logits = passes(images, frozen)
        passes.backward(F.cross_entropy(logits, labels))
        out.append((logits.clone(), torch.cat([p.grad.flatten() for p in student.parameters()]),
                    {k: v.clone() for k, v in student.state_dict().items()}))
    (eager_logits, eager_grad, eager_state), (logits, grad, state) = out
    torch.testing.assert_close(logits, eager_logits, rtol=1e-2, atol=1e-2)
    assert (grad - eager_grad).norm() <= 1e-2 * eager_grad.norm()
    for name, value in eager_state.items():
        if name.endswith("num_batches_tracked"):
            assert torch.equal(state[name], start[name] + 1) and torch.equal(value, start[name] + 1), name
        elif "running_" in name and frozen:
            assert torch.equal(state[name], start[name]), name  # momentum 0, captured as such
        elif "running_" in name:
            assert not torch.equal(state[name], start[name]), name  # not the frozen graph
            torch.testing.assert_close(state[name], value, rtol=1e-3, atol=1e-5)


@needs_cuda
def test_a_replayed_steps_gradient_is_the_sum_of_its_three_passes(tmp_path):
    """The labelled, mixed and replay passes through the one graph of BatchNorm statistics moving:
    each backward adds into the parameters' own .grad, none overwrites the one before (which
    would be off by two thirds of the sum)."""
    trainer = ssl_trainer(tmp_path, "cuda", graphs=True, freeze_bn=False)
    images = torch.rand(3, 4, 3, *trainer.cfg.train.crop_size, device="cuda")
    weight = next(trainer.student.parameters())
    trainer.forward(images[0])  # the capture
    grads = []
    for k in range(3):
        trainer.student.zero_grad(set_to_none=False)
        torch.manual_seed(k)  # each pass's own dropout masks, the same in both loops
        trainer.student_pass.backward(trainer.forward(images[k]).square().mean())
        grads.append(weight.grad.clone())
    trainer.student.zero_grad(set_to_none=False)
    for k in range(3):
        torch.manual_seed(k)
        trainer.student_pass.backward(trainer.forward(images[k]).square().mean())
    total = grads[0] + grads[1] + grads[2]
    assert (weight.grad - total).norm() <= 1e-2 * total.norm()


@needs_cuda
def test_replayed_batch_building_gives_the_eager_batches(tmp_path):
    """Batches are built from the same draws whether replayed or not; each replayed batch is read
    before the next is built (it lives in its graph's output until then)."""
    built = {}
    for graphs in (False, True):
        trainer = ssl_trainer(tmp_path / str(graphs), "cuda", graphs)
        trainer.step = trainer.iters
        batches = trainer.batches()
        built[graphs] = [{name: {k: v.clone() for k, v in part.items()} for name, part in next(batches)._asdict().items()
                          if part is not None} for _ in range(5)]
        assert trainer.replaying() is graphs
    assert any("replay" in step for step in built[True])
    for eager, replayed in zip(built[False], built[True], strict=True):
        assert eager.keys() == replayed.keys()
        for name in eager:
            for key, value in eager[name].items():
                if value.is_floating_point():  # the same kernels; cuBLAS may order a sum otherwise in a graph
                    torch.testing.assert_close(replayed[name][key], value, rtol=0, atol=1e-6)
                else:
                    assert torch.equal(replayed[name][key], value), (name, key)
