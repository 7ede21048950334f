"""Atomic training checkpoints: a kill while saving leaves the previous checkpoint intact."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def checkpoint_path(run_dir: Path, cycle: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"cycle_{cycle}.pt"


def save_checkpoint(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"{path}: cannot read checkpoint: {err}") from err


def load_trained_model(path: Path, network: str = "teacher", device: str | torch.device = "cpu"):
    """(model in eval mode, RunConfig) from a training checkpoint; `network` is teacher or student."""
    from s4al.config import saved_config
    from s4al.model import build_model

    state = load_checkpoint(path)
    if network not in ("teacher", "student"):
        raise ValueError(f"network must be 'teacher' or 'student', got {network!r}")
    cfg = saved_config(state["config"], path)
    model = build_model(cfg.model.model_copy(update={"weights": None}), len(state["classes"]))
    model.load_state_dict(state[network])
    return model.to(device).eval(), cfg
