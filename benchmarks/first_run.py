"""How long the README's two first commands take on this machine: the demo (`make demo`: a new run
of the demo preset, then its report) and the test suite (`make test`), each timed whole, in a fresh
folder, so that an existing runs/demo is neither resumed nor touched.

    .venv/bin/python benchmarks/first_run.py               # writes results/first_run/<machine>.{json,md}
    .venv/bin/python benchmarks/first_run.py --only demo

Time it alone: a second process on the machine slows both."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, machine_info, machine_tag, markdown_table, write_json

S4AL = [sys.executable, "-m", "s4al.cli"]


def steps(work: Path, overrides: list[str]) -> dict[str, list[list[str]]]:
    """Each README command as the commands it runs (what the Makefile runs once .venv exists)."""
    sets = [arg for key in overrides for arg in ("--set", key)]
    return {
        "demo": [[*S4AL, "run", "--config", "demo", "--out", str(work / "demo"), "--quiet", *sets],
                 [*S4AL, "report", str(work / "demo")]],
        "test": [[sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(work / "pytest")]],
    }


def timed(commands: list[list[str]], work: Path) -> dict:
    """Wall seconds of `commands` run one after another, stopping at the first that fails."""
    shown = [" ".join(command).replace(str(work), "WORK") for command in commands]
    started = time.monotonic()
    for command, line in zip(commands, shown):
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            return {"seconds": time.monotonic() - started, "exit_code": done.returncode, "failed": line,
                    "output_tail": (done.stdout + done.stderr)[-2000:]}
    return {"seconds": time.monotonic() - started, "exit_code": 0, "commands": shown,
            "last_line": ((done.stdout + done.stderr).strip().splitlines() or [""])[-1].replace(str(work), "WORK")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("demo", "test"), action="append", help="time this one (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the demo run (for a quick check of this script)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="writes OUT/first_run/TAG.json; default %(default)s")
    parser.add_argument("--tag", help="machine tag for the file name (default: from the CPU)")
    args = parser.parse_args(argv)
    info = machine_info()
    with tempfile.TemporaryDirectory() as work:
        chosen = {name: commands for name, commands in steps(Path(work), args.overrides).items()
                  if not args.only or name in args.only}
        times = {name: timed(commands, Path(work)) for name, commands in chosen.items()}
    result = {"steps": times, "demo_overrides": args.overrides, "machine": info}
    out = args.out / "first_run" / f"{args.tag or machine_tag(info, 'cpu')}.json"
    write_json(out, result)
    rows = [[f"make {name}", f"{t['seconds'] / 60:.1f} min", str(t["exit_code"]), t.get("last_line", "")]
            for name, t in times.items()]
    out.with_suffix(".md").write_text(f"# First run: {info['cpu']} ({info['cpus_usable']} CPUs), torch {info['torch']}, "
                                      f"{info['date']}\n\n" + markdown_table(["command", "wall", "exit code", "its last line"], rows))
    print(out.with_suffix(".md").read_text())
    return int(any(t["exit_code"] for t in times.values()))


if __name__ == "__main__":
    raise SystemExit(main())
