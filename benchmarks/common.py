"""What the benchmark scripts share: repository paths, the CamVid paths override, the smoke-size
synthetic config, machine information, atomic JSON results and Markdown tables."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(REPO))  # this checkout's s4al, also where the environment installed another one

from s4al.config import merge_overrides  # noqa: E402
from s4al.atomic import atomic_write  # noqa: E402
from s4al.provenance import code_version, libraries  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# Where the camvid preset's relative paths point when run from the repository root.
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data" / "camvid"
DEFAULT_WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_imagenet.pth"
CAMVID_SIZE = (360, 480)  # (H, W): the resolution the paper trains, scores and evaluates at

# The demo preset shrunk to seconds: 48x64 synthetic streets (a 12x16 grid of 4x4 cells, as
# CamVid's 360x480 is a 12x16 grid of 30x30 cells), no ImageNet weights, no loader workers.
SMOKE_OVERRIDES = {
    "dataset": {"synthetic": {"num_train": 20, "num_val": 4, "height": 48, "width": 64}},
    "train": {"epochs": 2, "iters_per_epoch": 2, "crop_size": [48, 64], "batch_size": 2, "unlabelled_batch_size": 2,
              "eval_every": 1000, "checkpoint_every": 1000, "num_workers": 0, "eval_batch_size": 4, "device": "cpu"},
    "ssl": {"replay_size": 4, "cold_start_epochs": 1, "balanced_from_cycle": 1, "balanced_from_epoch": 1},
    "active": {"cycles": 1, "score_batch_size": 4},
}


def merged(*overrides: dict) -> dict:
    """Nested config overrides combined left to right (later ones win key by key)."""
    out: dict = {}
    for part in overrides:
        out = merge_overrides(out, part)
    return out


def camvid_paths(data_root: Path, weights: Path) -> dict:
    """Absolute dataset and weights paths, so that the camvid preset works from any directory; and
    CamVid's test split where the data root has one (every cycle then reports test mIoU too)."""
    root = Path(data_root).resolve()
    dataset = {"root": str(root), **({"test_split": "test"} if (root / "test").is_dir() else {})}
    return {"dataset": dataset, "model": {"weights": str(Path(weights).resolve())}}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        return None
    return round(kib / 2**20, 1)


def machine_info() -> dict:
    import torch

    libs = libraries()
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        **libs,
        "smp": libs["segmentation_models_pytorch"],  # the key older result files have
        "git_commit": None, "git_dirty": None,  # outside a git checkout
        **code_version(REPO, ("s4al", "benchmarks")),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def machine_tag(info: dict, device: str) -> str:
    """A file-name-safe name for the machine, e.g. 'amd-epyc-2cpu' or 'nvidia-h100-80gb-hbm3'."""
    name = info["gpu"] if device.startswith("cuda") else f"{info['cpu']} {info['cpus_usable']}cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def write_json(path: Path, data: dict) -> None:
    """Written whole or not at all: a killed run never leaves a half-written result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as file:
        file.write(json.dumps(data, indent=2) + "\n")


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"
