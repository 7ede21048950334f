from pathlib import Path

import pytest
import torch

from s4al.config import RunConfig, load_config

# Tiny tensors gain nothing from intra-op threads, and two threads per process thrash when the
# suite's subprocesses and DataLoader workers share a 2-core machine.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared"
CAMVID = SHARED / "data" / "camvid"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"


def tiny_config(**sections) -> RunConfig:
    """The demo preset shrunk for tests: 48x64 synthetic images, a few steps, no workers."""
    overrides = {
        "dataset": {"synthetic": {"num_train": 20, "num_val": 4, "height": 48, "width": 64}},
        "train": {"epochs": 2, "iters_per_epoch": 2, "crop_size": [48, 64], "batch_size": 2,
                  "unlabelled_batch_size": 2, "eval_every": 1, "num_workers": 0, "eval_batch_size": 4},
        "ssl": {"cold_start_epochs": 1, "replay_size": 4, "balanced_from_cycle": 0, "balanced_from_epoch": 1},
        "active": {"cycles": 1, "initial_fraction": 0.2, "region_size": 16, "regions_per_image": 2},
    }
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_config("demo", overrides)


@pytest.fixture
def camvid_root() -> Path:
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"CamVid not present at {CAMVID}")
    return CAMVID
