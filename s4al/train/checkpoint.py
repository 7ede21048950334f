"""Atomic training checkpoints: a kill while saving leaves the previous checkpoint intact."""

from __future__ import annotations

from pathlib import Path

import torch

from s4al.atomic import atomic_write


class CheckpointError(OSError):
    """A checkpoint that could not be written; the previous one, if any, is intact."""


def save_checkpoint(state: dict, path: Path) -> None:
    """Atomic: a failed write (a full disk) keeps the previous checkpoint and leaves no temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(path) as file:
            torch.save(state, file)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was written"
        raise CheckpointError(f"{path}: cannot write checkpoint ({err}); {kept}. "
                              "Is the disk full? Resume once there is room") from None


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
