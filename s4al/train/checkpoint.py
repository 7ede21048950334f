"""Training checkpoints on disk: saved atomically (a kill while saving leaves the previous
checkpoint intact), the metrics log that mirrors the evaluations they hold, and another run's
final checkpoint adopted as a run's own."""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Collection
from pathlib import Path

import torch

from s4al import distributed
from s4al.errors import S4alError, S4alWarning
from s4al.atomic import atomic_write
from s4al.config import RunConfig, config_differences, flat_config, saved_config
from s4al.run_folder import RunFolder, json_lines
from s4al.text import counted


class CheckpointError(S4alError, OSError):
    """A checkpoint that could not be written; the previous one, if any, is intact."""


class UnfinishedCheckpoint(S4alWarning):
    """A checkpoint of a training that has not reached its last step, used as it is."""


class AdoptionRefused(S4alError):
    """Another run's checkpoint that a run may not take as its own; the message names the file and
    why. Nothing was written."""


class ConfigDiffers(AdoptionRefused):
    """Refused because the checkpoint was trained with settings the taking run does not have."""


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


CHECKPOINT_KEYS = ("student", "teacher", "config", "classes")  # what every reader of a checkpoint needs


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint's state, read as data only: a file that would run code as it is read
    (a pickle of objects, not of tensors and plain values) is refused, not run."""
    path = Path(path)
    if path.is_dir():
        last = RunFolder(path).last_checkpoint()
        hint = f"; its last: {last}" if last else ""
        raise S4alError(f"{path}: a folder; give a checkpoint of it, RUN/checkpoints/cycle_N.pt{hint}")
    try:
        damaged = damaged_part(path)
        state = None if damaged else torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise S4alError(f"{path}: no such checkpoint") from None
    except pickle.UnpicklingError as err:  # weights_only refuses what is not data
        raise S4alError(f"{path}: not read: it holds objects other than tensors and plain values, which reading "
                        f"would run as code ({str(err).splitlines()[0]}); s4al checkpoints hold none") from None
    except Exception as err:  # a truncated or foreign file
        raise S4alError(f"{path}: cannot read checkpoint: {err} (a file cut short, damaged, or not a torch file)") from err
    if damaged:
        raise S4alError(f"{path}: damaged: its part '{damaged}' no longer matches the checksum written with it (a "
                        "fault of the disk or of a copy); restore the file from a copy. A run's checkpoint of a cycle "
                        "still training may be deleted instead: the cycle then trains again from its start")
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise S4alError(f"{path}: not a checkpoint of s4al train or run (RUN/checkpoints/cycle_N.pt): it has no "
                        f"{', '.join(repr(key) for key in missing)}")
    return state


def processes_to_resume(state: dict) -> int | None:
    """The processes an unfinished checkpoint resumes on, as many as trained it (train.batch_size is
    per process, so on others the rest of the cycle would train on other batches); None for a
    finished one or one of an older version that did not record them."""
    return state.get("processes") if state.get("step", 0) < state.get("total_steps", 0) else None


def refuse_other_processes(state: dict, path: Path, processes: int) -> None:
    """Refuses to resume an unfinished checkpoint on other processes than trained it."""
    trained_on = processes_to_resume(state)
    if trained_on in (None, processes):
        return
    how = "without torchrun" if trained_on == 1 else "torchrun: --nnodes times --nproc_per_node"
    raise S4alError(
        f"{path}: trained on {_processes(trained_on)}, this run has {processes}; resume it on "
        f"{_processes(trained_on)} ({how}): train.batch_size is per process, so the rest of the cycle would train "
        f"on other batches. To train the cycle anew on {_processes(processes)} (its {state['step']} steps lost), "
        "remove that file first"
    )


def refuse_other_processes_at(path: Path, processes: int) -> None:
    """refuse_other_processes for the checkpoint at `path`, if there is one: before a start is recorded."""
    if path.is_file():
        refuse_other_processes(load_checkpoint(path), path, processes)


def _processes(count: int) -> str:
    return counted(count, "process", "processes")


def damaged_part(path: Path) -> str | None:
    """The first part of a checkpoint (an entry of the zip archive torch.save writes) whose bytes fail
    the CRC-32 written with them, or None: torch.load reads such bytes without a word. A file that is
    no zip archive (cut short, foreign, torch's legacy format) is left to torch.load to judge."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error):
        return None


def load_trained_model(path: Path, network: str = "teacher", device: str | torch.device = "cpu"):
    """(model in eval mode, RunConfig) from a training checkpoint; `network` is teacher or student."""
    return trained_model(load_checkpoint(path), path, network, device)


def trained_model(state: dict, path: Path, network: str = "teacher", device: str | torch.device = "cpu"):
    """load_trained_model of a checkpoint already read from `path`; one of a training not finished
    (a run at work, or stopped) is used, and said to be such."""
    from s4al.model import build_model

    if network not in ("teacher", "student"):
        raise S4alError(f"network must be 'teacher' or 'student', got {network!r}")
    step, total = state.get("step"), state.get("total_steps")
    if step is not None and total is not None and step < total and distributed.is_main():  # said once a job
        warnings.warn(f"{path}: of a training not finished, at step {step} of {total}", UnfinishedCheckpoint)
    cfg = saved_config(state["config"], path)
    model = build_model(cfg.model.model_copy(update={"weights": None}), len(state["classes"]))
    model.load_state_dict(state[network])
    return model.to(device).eval(), cfg


def write_metrics_log(path: Path, cycle: int, history: list[dict]) -> None:
    """A run's metrics.jsonl: the other cycles' lines, then `cycle`'s evaluations (a checkpoint's
    history), rewritten whole after each checkpoint, so a resumed cycle never logs one twice."""
    # a damaged line is kept as it is
    kept = [line for line, record in json_lines(path) if record is None or record.get("cycle") != cycle]
    with atomic_write(path, "w") as file:
        file.write("".join(f"{line}\n" for line in kept + [json.dumps(record) for record in history]))


def adoptable_checkpoint(source_run_dir: Path, cfg: RunConfig, cycle: int = 0,
                         may_differ: Collection[str] = (), processes: int = 1) -> dict:
    """The source run's final checkpoint of `cycle`, read, if a run made with `cfg` may take it as
    its own: the cycle's last step, trained with a config that differs from `cfg` only in
    `may_differ` (the keys the cycle's training does not read) and, where the cycle is the final one
    of neither run (its epochs are then the same), in active.cycles; by as many processes (each
    drew train.batch_size images a step). Else AdoptionRefused."""
    path = RunFolder(source_run_dir).checkpoint_path(cycle)
    if not path.is_file():
        raise AdoptionRefused(f"{source_run_dir}: has no checkpoint of cycle {cycle} ({path})")
    state = load_checkpoint(path)
    if state["cycle"] != cycle or state["step"] != state["total_steps"]:
        raise AdoptionRefused(f"{path}: at step {state['step']} of {state['total_steps']} of cycle "
                              f"{state['cycle']}, not the final checkpoint of cycle {cycle}")
    if state.get("processes", 1) != processes:
        theirs = state.get("processes", 1)
        how = "without torchrun" if theirs == 1 else f"under torchrun with {theirs} processes in all"
        raise AdoptionRefused(f"{path}: trained by {counted(theirs, 'process', 'processes')}, each with its own "
                              f"train.batch_size; this run has {processes}: start it {how}, as the cycles it trains go "
                              "on from that one")
    trained_with = saved_config(state["config"], path)
    if cycle < min(trained_with.active.cycles, cfg.active.cycles):  # not the final cycle of either: trained alike
        may_differ = {*may_differ, "active.cycles"}
    differences = config_differences(trained_with, cfg, may_differ)
    if differences:
        there, here = flat_config(trained_with), flat_config(cfg)
        shown = ", ".join(f"{key} ({there.get(key)!r} there, {here.get(key)!r} here)" for key in differences)
        raise ConfigDiffers(f"{path}: trained with another {shown}")
    return state


def _splits(folder: RunFolder) -> dict[str, str]:
    """The initial labelled images and the pool a run drew (none for `s4al train`'s folder)."""
    if not folder.splits_dir.is_dir():
        return {}
    return {path.name: path.read_text() for path in sorted(folder.splits_dir.iterdir())}


def adopt_final_checkpoint(source_run_dir: Path, target_run_dir: Path, cfg: RunConfig, cycle: int = 0,
                           may_differ: Collection[str] = (), processes: int = 1) -> None:
    """Makes the source run's final checkpoint of `cycle` the target run's own, as if the target
    had trained it: `cfg` (the target's config) inside, and the cycle's evaluations in the target's
    metrics log. The trainer then resumes it at its last step and trains nothing. Refused
    (AdoptionRefused, nothing written) if the target has a checkpoint of the cycle, drew other
    initial labels or another pool, or the checkpoint is not adoptable_checkpoint's."""
    source, target = RunFolder(source_run_dir), RunFolder(target_run_dir)
    own = target.checkpoint_path(cycle)
    if own.exists():
        raise AdoptionRefused(f"{own}: exists; a run keeps a checkpoint it has")
    if _splits(source) != _splits(target):
        raise AdoptionRefused(f"{source.splits_dir}: other initial labelled images or another pool than "
                              f"{target.splits_dir}")
    state = adoptable_checkpoint(source_run_dir, cfg, cycle, may_differ, processes)
    target.path.mkdir(parents=True, exist_ok=True)
    # the log first: a checkpoint on disk has its evaluations logged (a log left by a kill in between
    # is rewritten by whatever next writes the cycle: another adoption or the trainer's first save)
    write_metrics_log(target.metrics_log, cycle, state["history"])
    # the source spent the training time, not the target (a benchmark counts the source's once)
    save_checkpoint(state | {"config": cfg.model_dump(mode="json"), "seconds": 0.0}, own)
