"""The learner's passes replayed as CUDA graphs (s4al/train/graphs.py) train as the eager passes do,
and stay off wherever they cannot run."""

import pytest
import torch

from conftest import tiny_config
from s4al.data import build_dataset
from s4al.train.trainer import Trainer, TrainData

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def ssl_trainer(tmp_path, device: str, graphs: bool, freeze_bn: bool = True) -> Trainer:
    cfg = tiny_config(ssl={"confidence_threshold": 0.0, "freeze_bn_on_unlabelled": freeze_bn},
                      train={"device": device, "epochs": 4, "cuda_graphs": graphs})
    train = build_dataset(cfg.dataset, "train", cfg.seed)
    return Trainer(cfg, TrainData(train, labelled=[0, 1, 2, 3], pool=list(range(4, len(train)))), None, tmp_path)


def test_graphs_and_their_kept_gradients_are_off_on_a_cpu(tmp_path):
    trainer = ssl_trainer(tmp_path, "cpu", graphs=True)
    assert trainer.fast is False and not trainer.replaying()
    assert trainer.grads_to_none and all(p.grad is None for p in trainer.student.parameters())


@needs_cuda
@pytest.mark.parametrize("freeze_bn", [True, False])  # False: one graph replayed three times a step
def test_replayed_passes_train_as_the_eager_ones(tmp_path, freeze_bn):
    """Six SSL steps with replay from the same start, eager and replayed: the same parameters and
    BatchNorm statistics up to floating-point noise, far below what the steps changed."""
    states = {}
    for graphs in (False, True):
        trainer = ssl_trainer(tmp_path / str(graphs), "cuda", graphs, freeze_bn)
        assert trainer.student_pass.graphs is graphs
        trainer.step = trainer.iters  # SSL on: the labelled, mixed and replay passes all run
        start = {k: v.clone() for k, v in trainer.student.state_dict().items()}
        batches = trainer.batches()
        for k in range(6):
            trainer.train_step(trainer.step + k, *next(batches))
        states[graphs] = trainer.student.state_dict(), trainer.teacher.model.state_dict()
    for network in (0, 1):
        eager, replayed = states[False][network], states[True][network]
        for name, value in eager.items():
            if not value.is_floating_point():
                assert torch.equal(replayed[name], value), name  # num_batches_tracked: not moved by captures
                continue
            moved = (value - start[name]).abs().max().item()
            assert (replayed[name] - value).abs().max().item() <= 0.05 * moved + 1e-6, name


@needs_cuda
def test_a_replayed_steps_gradient_is_the_sum_of_its_three_passes(tmp_path):
    """The labelled, mixed and replay passes through the one graph of BatchNorm statistics moving:
    each backward adds into the parameters' own .grad, none overwrites the one before."""
    trainer = ssl_trainer(tmp_path, "cuda", graphs=True, freeze_bn=False)
    images = torch.rand(3, 4, 3, *trainer.cfg.train.crop_size, device="cuda")
    weight = next(trainer.student.parameters())
    grads = []
    for k in range(3):
        trainer.student.zero_grad(set_to_none=False)
        trainer.student_pass.backward(trainer.forward(images[k]).square().mean())
        grads.append(weight.grad.clone())
    trainer.student.zero_grad(set_to_none=False)
    for k in range(3):
        trainer.student_pass.backward(trainer.forward(images[k]).square().mean())
    torch.testing.assert_close(weight.grad, grads[0] + grads[1] + grads[2], rtol=1e-4, atol=1e-6)


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
