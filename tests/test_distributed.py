"""Two CPU processes with gloo, as torchrun would start them, against one process."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_config
from s4al import distributed
from s4al.data import build_dataset
from s4al.evaluate import evaluate
from s4al.model import build_model
from s4al.train.trainer import Trainer, TrainData

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank: int, port: int) -> torch.device:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    return distributed.setup_device("cpu")


def fixed_model(cfg):
    torch.manual_seed(0)
    return build_model(cfg.model, 9).eval()


def flat_state(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten() for t in module.state_dict().values()])


def train_and_evaluate(rank: int, port: int, out: str) -> None:
    device = join(rank, port)
    cfg = tiny_config(train={"device": "cpu"})
    val = build_dataset(cfg.dataset, "val", cfg.seed)
    scores = evaluate(fixed_model(cfg), val, 1, device)
    train = build_dataset(cfg.dataset, "train", cfg.seed)
    data = TrainData(train, labelled=[0, 1, 2, 3], pool=list(range(4, len(train))))
    result = Trainer(cfg, data, None, os.path.join(out, "run"), progress=lambda r: None).fit()
    teachers = distributed.gather_objects(flat_state(result.teacher))
    # student BatchNorm statistics are per rank until DDP's next broadcast: compare parameters
    students = distributed.gather_objects(torch.cat([p.detach().flatten() for p in result.student.parameters()]))
    torch.save({"scores": scores, "teachers": teachers, "students": students}, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_with_one_process(tmp_path):
    mp.start_processes(train_and_evaluate, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    cfg = tiny_config(train={"device": "cpu"})
    single = evaluate(fixed_model(cfg), build_dataset(cfg.dataset, "val", cfg.seed), 1, torch.device("cpu"))
    assert results[0]["scores"] == results[1]["scores"] == single  # confusion matrices summed, not averaged
    teachers, students = results[0]["teachers"], results[0]["students"]
    assert torch.equal(teachers[0], teachers[1]), "EMA teacher diverged across ranks"
    assert torch.equal(students[0], students[1]), "student parameters diverged across ranks"
    assert (tmp_path / "run" / "checkpoints" / "cycle_0.pt").exists()
