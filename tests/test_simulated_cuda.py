"""The CUDA fast path on a simulated GPU (tests/simulated_cuda.py): no host tensor meets a device
tensor, a training step reads nothing back, inference reads its result back once."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU runs the fast path itself")

SSL_STEP_LOGS = {"loss/sup", "loss/unsup", "eta/unsup"}
REPLAY_STEP_LOGS = SSL_STEP_LOGS | {"loss/replay", "eta/replay"}


def simulated(case: str, tmp_path: Path) -> dict:
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("simulated_cuda.py")), case, str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_every_fast_ssl_step_keeps_its_tensors_on_a_simulated_gpu_and_reads_nothing_back(tmp_path):
    # a host read inside a step, or a host tensor in one of its operations, ends the process with the error
    learners = simulated("training", tmp_path)
    assert set(learners) == {"default", "paper", "probabilities", "plain_classmix", "supervised"}
    for name, run in learners.items():
        assert run["fast"] and run["amp"] and run["sgd"] == {"fused": True}, name
        assert {device for step in run["steps"] for device in step.values()} == {"cuda:0"}, name
        if name == "supervised":
            assert [set(step) for step in run["steps"]] == [{"loss/sup"}] * 4
        else:  # 2 cold-start steps, a first SSL step (the replay buffer empty), one with replay
            assert [set(step) for step in run["steps"]] == [{"loss/sup"}, {"loss/sup"}, SSL_STEP_LOGS, REPLAY_STEP_LOGS]


def test_a_fit_on_a_simulated_gpu_reads_back_at_the_end_of_an_epoch_not_of_each_step(tmp_path):
    reads = simulated("fit", tmp_path)
    kinds = {steps: [kind for kind, _ in made] for steps, made in reads.items()}
    assert kinds["2"] == kinds["6"]  # up to READ_EVERY (25) steps an epoch

    def epoch(logged: int) -> list:
        # its logged values in one copy, whether the state is finite, the val confusion counts (9 x 9 and the
        # void bin), and the checkpoint's copy of the argmax alignment's state: running shares, bias, target,
        # predicted
        return [["tolist", [logged]], ["__int__", []], ["cpu", [82]]] + [["cpu", [9]]] * 4

    # epoch 1 of 6 steps: the supervised loss alone; epoch 2: a first SSL step (3 values) and 5 with replay (5 each)
    assert reads["6"] == epoch(6) + epoch(3 + 5 * 5)
    assert reads["2"] == epoch(2) + epoch(3 + 5)


def test_inference_on_a_simulated_gpu_reads_back_once_from_the_device_cache_and_per_batch_from_loaders(tmp_path):
    reads = simulated("inference", tmp_path)
    scorings = ["cells_entropy", "cells_margin", "cells_least_confidence", "cells_random", "images_entropy",
                "images_coreset"]
    assert set(reads) == {f"fast_{fast}_{name}" for fast in ("on", "off") for name in ["evaluation", *scorings]}
    pool, batch = 20, 4  # tiny_config: 20 train images, all scored; active.score_batch_size
    assert [len(reads[f"fast_{fast}_evaluation"]) for fast in ("on", "off")] == [1, 1]  # the confusion matrix
    for name in scorings:
        # the device cache: the whole pool's scores (Core-Set: features) in one copy, after the last batch
        [(_, shape)] = reads[f"fast_on_{name}"]
        assert shape[0] == pool, name
        # loader batches: each batch's, copied as the next is scored
        assert [shape[0] for _, shape in reads[f"fast_off_{name}"]] == [batch] * (pool // batch), name


def test_the_simulation_refuses_a_host_tensor_in_a_device_operation_and_a_host_read(tmp_path):
    errors = simulated("controls", tmp_path)
    # torch 2.14: "Expected all tensors to be on the same device, but found ... cuda:0 and cpu!"; 2.11:
    # "Unhandled FakeTensor Device Propagation for aten.add.Tensor, found two different devices cuda:0, cpu"
    assert re.search(r"(same|different) devices?\b.*cuda:0.*cpu", errors["host_meets_device"])
    assert errors["host_scalar_meets_device"] is None  # a 0-dim host tensor is a scalar to torch on a GPU too
    assert "host read (__bool__)" in errors["host_read"]
    assert "written into a device tensor" in errors["host_index_write"]
    assert "copied to the device from pageable memory" in errors["pageable_copy"]
    assert errors["pinned_copy"] is None
