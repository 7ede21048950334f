"""Which code, libraries and command made a run: one line per start of `s4al run` or `s4al train`
in the run folder's starts.jsonl, so a run made or resumed with changed code says so."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from s4al import __version__
from s4al.run_folder import json_lines

PACKAGE_ROOT, PACKAGE = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent.name
GIT_SECONDS = 30  # a git call that takes longer (a network file system) leaves the code's identity unknown


def _git(root: Path, *args: str) -> bytes | None:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True,
                              timeout=GIT_SECONDS).stdout
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, a refused one ("dubious ownership")
        return None


def code_version(root: Path = PACKAGE_ROOT, paths: tuple[str, ...] = (PACKAGE,)) -> dict:
    """s4al's version and, when `root` is the top of a git checkout, the commit and whether the
    files under `paths` differ from it (the tracked ones, and Python files not yet added);
    `git_diff_sha256` tells two differences apart (the same digest: the same change). Where git
    cannot tell (no git, another checkout above an installed s4al, a failed call), no git keys."""
    version: dict = {"s4al": __version__}
    top, commit, diff = (_git(root, "rev-parse", "--show-toplevel"), _git(root, "rev-parse", "HEAD"),
                         _git(root, "diff", "HEAD", "--no-ext-diff", "--no-color", "--", *paths))
    new_files = _git(root, "ls-files", "-z", "--others", "--exclude-standard", "--", *(f"{p}/*.py" for p in paths))
    if None in (top, commit, diff, new_files) or Path(os.fsdecode(top.rstrip(b"\n"))).resolve() != root.resolve():
        return version
    change = hashlib.sha256(diff)
    for name in filter(None, new_files.split(b"\0")):  # a module added and not yet committed is code too
        try:
            change.update(name + b"\0" + (root / os.fsdecode(name)).read_bytes())
        except OSError:  # gone since git listed it
            continue
    dirty = bool(diff) or bool(new_files)
    version.update(git_commit=commit.decode().strip(), git_dirty=dirty,
                   git_diff_sha256=change.hexdigest() if dirty else None)
    return version


def libraries() -> dict:
    import segmentation_models_pytorch as smp
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "segmentation_models_pytorch": smp.__version__}


def _program() -> str:
    """The command's program: `s4al` for the package itself (its script, `python -m s4al.cli`), else
    the script that ran it (a benchmark, a user's own wrapper)."""
    path = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("s4al")
    return "s4al" if path.resolve().parent == Path(__file__).resolve().parent else path.name


def start_record(device: torch.device, processes: int) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [_program(), *sys.argv[1:]],
        "host": platform.node(),
        "device": str(device) + (f" ({gpu})" if gpu else ""),
        "processes": processes,
        **code_version(),
        **libraries(),
    }


def code_text(start: dict) -> str:
    """The code a start ran, e.g. `s4al 0.1.0, git 4e1f43d, modified (diff 1a2b3c4d)`; a record made
    before the version or the digest was kept goes without."""
    parts = [f"s4al {start['s4al']}"] if start.get("s4al") else []
    if start.get("git_commit"):
        digest = start.get("git_diff_sha256")
        modified = (f", modified (diff {digest[:8]})" if digest else ", modified") if start.get("git_dirty") else ""
        parts.append(f"git {start['git_commit'][:7]}{modified}")
    return ", ".join(parts) or "s4al ?"


def record_start(starts_log: Path, device: torch.device, processes: int) -> str | None:
    """Appends this start to a run's starts.jsonl (a line cut short by a kill is passed over by
    readers). Returns a note when the run's last start ran other code (both read from git), else None."""
    record = start_record(device, processes)
    earlier = [r for _, r in json_lines(starts_log) if r is not None]
    cut_short = starts_log.is_file() and starts_log.stat().st_size and not starts_log.read_bytes().endswith(b"\n")
    with open(starts_log, "a", encoding="utf-8") as log:
        log.write(("\n" if cut_short else "") + json.dumps(record) + "\n")  # a line cut by a kill stays apart
        log.flush()
        os.fsync(log.fileno())
    known = earlier and "git_commit" in earlier[-1] and "git_commit" in record  # else the code may be the same
    if known and code_text(earlier[-1]) != code_text(record):
        return (f"{starts_log.parent} was last started with {code_text(earlier[-1])}; this start runs "
                f"{code_text(record)}: what it trains and asks from now on comes from other code")
    return None
