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
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True, check=True,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def code_version() -> dict:
    """s4al's version and, when it runs from its own git checkout, the commit and whether the files
    differ from it (the tracked ones, and the package's Python files not yet added);
    `git_diff_sha256` tells two differences apart (the same digest: the same change)."""
    version: dict = {"s4al": __version__}
    found = (_git("rev-parse", "--show-toplevel", "HEAD") or "").split()
    if len(found) != 2 or Path(found[0]).resolve() != PACKAGE_ROOT.resolve():  # installed (perhaps in a checkout's venv), no git
        return version
    commit = found[1]
    change = hashlib.sha256((_git("diff", "HEAD", "--no-ext-diff", "--no-color") or "").encode())
    new_files = (_git("ls-files", "--others", "--exclude-standard", "--", f"{PACKAGE}/*.py") or "").splitlines()
    for name in new_files:  # a module added to the package and not yet committed is part of the code too
        change.update(name.encode() + b"\0" + (PACKAGE_ROOT / name).read_bytes())
    dirty = change.hexdigest() != EMPTY_SHA256
    version.update(git_commit=commit, git_dirty=dirty, git_diff_sha256=change.hexdigest() if dirty else None)
    return version


def libraries() -> dict:
    import segmentation_models_pytorch as smp
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "segmentation_models_pytorch": smp.__version__}


def start_record(device: torch.device, processes: int) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["s4al", *sys.argv[1:]],
        "host": platform.node(),
        "device": str(device) + (f" ({gpu})" if gpu else ""),
        "processes": processes,
        **code_version(),
        **libraries(),
    }


def code_text(start: dict) -> str:
    """The code a start ran, e.g. `s4al 0.1.0, git 4e1f43d, modified (diff 1a2b3c4d)`."""
    text = f"s4al {start.get('s4al', '?')}"
    if start.get("git_commit"):
        text += f", git {start['git_commit'][:7]}"
        if start.get("git_dirty"):
            text += f", modified (diff {start['git_diff_sha256'][:8]})"
    return text


def record_start(starts_log: Path, device: torch.device, processes: int) -> str | None:
    """Appends this start to a run's starts.jsonl (a line cut short by a kill is passed over by
    readers). Returns a note when the run's last start ran other code, else None."""
    record = start_record(device, processes)
    earlier = [r for _, r in json_lines(starts_log) if r is not None]
    with open(starts_log, "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
        log.flush()
        os.fsync(log.fileno())
    if earlier and code_text(earlier[-1]) != code_text(record):
        return (f"{starts_log.parent} was last started with {code_text(earlier[-1])}; this start runs "
                f"{code_text(record)}: what it trains and asks from now on comes from other code")
    return None
