"""Label efficiency: every METHOD (a config override) under one PROTOCOL (a config preset plus
overrides: CamVid at the paper's or a CPU's budget, or the built-in synthetic streets), with the
same seeds, network and iteration budget for every method, and the product's default learner
(`s4al_paper`: the paper's).

One JSON result per (protocol, method, seed) goes to RESULTS/<protocol>/<method>_seed<k>.json;
existing results are skipped, and each run lives in WORK/<protocol>/<method>_seed<k>/, which a
rerun resumes (the active-learning run folder checkpoints itself), so a killed benchmark continues
where it stopped. `--time-limit SECONDS --parallel K` runs K of them side by side as separate
processes and stops them before SECONDS; a run that would fit a whole window but not the time left
(by what the same method took with other seeds: `expected_seconds`) is left to the rerun.
`summarize.py` turns the results into tables and plots.

Same cycle 0: runs of one seed whose configs differ only in what the acquisition reads
(ACQUISITION_ONLY, e.g. s4al and region_random_ssl) train the identical cycle 0. The first to
finish it lends its final cycle-0 checkpoint to the others, which resume from it at its last step
and so train nothing before their first acquisition; their result files name the lender
(`cycle0_from`). `--no-share-cycle0` trains every cycle 0 anew.

Same budget: methods without acquisition cycles (full_supervised, sup_10, ssl_10) train once, and
that single cycle is the final one, so it gets `final_cycle_epoch_multiplier` x epochs: exactly the
iterations of the final cycle of the active-learning methods (on CamVid, 200 x 50 = 10,000 steps,
which is also Table S1's supervised budget of 100 x 100)."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from pathlib import Path

import numpy as np

from common import (
    DEFAULT_DATA_ROOT, DEFAULT_WEIGHTS, REPO, RESULTS, SMOKE_OVERRIDES, camvid_paths, cpu_model, machine_info, merged,
    write_json,
)

from s4al.config import (
    ACQUISITION_ONLY, COMPUTED_ON_RESUME, CYCLE0_MAY_DIFFER, SAVED_ON_RESUME, ConfigError, RunConfig,
    config_differences, load_config, parse_override, run_differences, saved_config,
)
from s4al.provenance import code_text, code_version, record_start
from s4al.run_folder import RunFolder, RunFolderError, json_lines
from s4al.text import first_of
from window import STARTED_AT, Job, run_window


@dataclass(frozen=True)
class Protocol:
    preset: str
    overrides: dict
    seeds: tuple[int, ...]
    # Evaluation height / 360: region sides of METHODS are in CamVid full-resolution pixels and are
    # scaled by this, so that a region covers the same share of the image at any resolution.
    region_scale: float = 1.0
    imagenet: bool = False  # an ImageNet encoder from --weights (the camvid preset: always)

    def needs_weights(self) -> bool:
        return self.imagenet or self.preset == "camvid"


# As close to Table S2 as 2 CPU cores allow. Only two things change: the training crop and the
# iteration budget. Scoring, the 30x30x4 regions and evaluation stay at full resolution (360x480).
# - Crops of 192x256 instead of whole images: a step of batch 4 costs ~0.7 s instead of ~2.5 s at
#   360x480, and thin classes (Pole, SignSymbol, Bicyclist) keep their full-resolution width, which
#   shrinking whole images to 144x192 destroyed (0 IoU). The scale jitter stays the paper's
#   0.75-1.25, centred on the evaluation scale: a 0.5-1.0 range would give more context per crop but
#   would train on objects 25% smaller on average than those evaluated.
# - Budget: 10 epochs x 24 iterations = 240 steps for cycles 0 and 1 (paper: 100 x 50), and the
#   final cycle 6x that (paper: 2x), 1,440 steps, which is also what every single-training method
#   (full_supervised, sup_10, ssl_10) gets. With 2x (480 steps), full supervision reached only
#   39.3 mIoU with Pole, SignSymbol, Pedestrian and Bicyclist at 0 IoU (seed 0): the evaluated
#   model must train longer than the acquisition models for the tail classes to register at all.
# - Cold start 6 epochs (144 steps; the paper: 10 epochs, 500 steps, "to provide a good
#   initialization for the teacher"): with 1 epoch (24 steps) the teacher pseudo-labelled from step
#   24 on and ssl_10 reached 43.3 mIoU, with 6 epochs 45.2 (seed 0, before distribution alignment
#   and frozen BatchNorm statistics on unlabelled passes).
#   Measured with benchmarks/speed.py on this 2-core CPU: a full SSL iteration with replay costs
#   3.5 s at 360x480, so about 1.0 s on 192x256 crops; a supervised step 0.31 s. One S4AL run:
#   ~8 min for cycles 0-1, ~24 min for the final cycle, ~2 min of evaluation and pool scoring at
#   full resolution: ~35 min, a little over the 30-minute target. full_supervised: ~8 min.
# - num_workers 2; evaluation only at the end of each cycle (the trainer always evaluates its last step).
CPU_OVERRIDES = {
    "train": {"device": "cpu", "crop_size": [192, 256], "scale_range": [0.75, 1.25], "epochs": 10,
              "iters_per_epoch": 24, "num_workers": 2, "eval_every": 1000},
    "active": {"final_cycle_epoch_multiplier": 6},
    "ssl": {"cold_start_epochs": 6, "balanced_from_epoch": 3},  # replay from epoch 6, after the cold start
}

SYNTHETIC_OVERRIDES = {
    "dataset": {"synthetic": {"num_train": 200, "num_val": 50, "height": 96, "width": 128}},
    "train": {"device": "cpu", "epochs": 10, "iters_per_epoch": 30, "eval_every": 1000, "num_workers": 0},
    "ssl": {"cold_start_epochs": 6, "balanced_from_epoch": 3},  # replay from epoch 6, after the cold start
    "active": {"reinit_each_cycle": True},
}

PROTOCOLS = {
    "cpu": Protocol("camvid", CPU_OVERRIDES, seeds=(0, 1, 2)),
    # Table S2 as the camvid preset has it (meant for a GPU). Loader workers do not change results
    # (every batch is a function of seed and step); 8 keep a GPU fed with 12 images per step.
    "paper": Protocol("camvid", {"train": {"num_workers": 8}}, seeds=(0, 1, 2)),
    # The built-in synthetic streets (96x128, thin poles, signs and pedestrians as the tail), with
    # an ImageNet encoder: minutes per method on a CPU, for checks that need no real data.
    "synthetic": Protocol("demo", SYNTHETIC_OVERRIDES, seeds=(0, 1, 2), region_scale=96 / 360, imagenet=True),
    "smoke": Protocol("demo", SMOKE_OVERRIDES, seeds=(0,), region_scale=48 / 360),
}

# What every method starts from: S4AL's acquisition, stated so no preset change can move a
# baseline. The learner is the product's default (s4al/config.py SSLConfig).
S4AL = {
    "active": {"level": "region", "metric": "entropy", "initial_fraction": 0.1},
    "ssl": {"enabled": True, "confidence_weighting": True, "classmix": True, "balanced_classmix": True, "replay": True},
}
SUPERVISED = {"ssl": {"enabled": False}}
NO_CYCLES = {"active": {"cycles": 0}}
# The paper's learner exactly: the additions "beyond the paper" in SSLConfig that are on by default,
# switched off (the others are off by default).
PAPER_LEARNER = {"ssl": {"distribution_alignment": "off", "class_normalised_confidence": False,
                         "freeze_bn_on_unlabelled": False}}


@dataclass(frozen=True)
class Method:
    overrides: dict = field(default_factory=dict)
    region: tuple[int, int] = (30, 4)  # cell side in CamVid full-resolution pixels, cells bought per image


METHODS = {
    "full_supervised": Method(merged(SUPERVISED, NO_CYCLES, {"active": {"initial_fraction": 1.0}})),
    # the same from a random encoder: what the ImageNet initialisation is worth
    "full_supervised_scratch": Method(merged(SUPERVISED, NO_CYCLES, {"active": {"initial_fraction": 1.0}},
                                             {"model": {"weights": None}})),
    "sup_10": Method(merged(SUPERVISED, NO_CYCLES)),
    # The whole S4AL learner without acquisition: its only cycle is cycle 0, where Balanced ClassMix
    # is off by default (balanced_from_cycle 1), so switch it on: s4al - ssl_10 = the bought regions.
    "ssl_10": Method(merged(NO_CYCLES, {"ssl": {"balanced_from_cycle": 0}})),
    # the paper's learner exactly, without our additions (s4al/config.py SSLConfig, "beyond the
    # paper"): what the additions are worth
    "ssl_10_paper": Method(merged(NO_CYCLES, {"ssl": {"balanced_from_cycle": 0}}, PAPER_LEARNER)),
    "image_random": Method(merged(SUPERVISED, {"active": {"level": "image", "metric": "random"}})),
    "image_entropy": Method(merged(SUPERVISED, {"active": {"level": "image", "metric": "entropy"}})),
    "image_coreset": Method(merged(SUPERVISED, {"active": {"level": "image", "metric": "coreset"}})),
    "region_random_ssl": Method({"active": {"metric": "random"}}),
    "region_entropy_nossl": Method(SUPERVISED),
    "s4al": Method(),
    "s4al_no_cw": Method({"ssl": {"confidence_weighting": False}}),
    "s4al_no_bcm": Method({"ssl": {"balanced_classmix": False, "replay": False}}),
    "s4al_paper": Method(PAPER_LEARNER),
    "s4al_margin": Method({"active": {"metric": "margin"}}),
    "s4al_least_confidence": Method({"active": {"metric": "least_confidence"}}),
    "image_entropy_ssl": Method({"active": {"level": "image", "metric": "entropy"}}),
    "s4al_30x30x2": Method(region=(30, 2)),
    "s4al_60x60x1": Method(region=(60, 1)),
}


def method_config(
    protocol: Protocol, method: Method, seed: int, data_root: Path, weights: Path, extra: dict | None = None
) -> RunConfig:
    """`extra` (from --set) applies on top of every method."""
    side, per_image = method.region
    region = {"active": {"region_size": max(1, round(side * protocol.region_scale)), "regions_per_image": per_image}}
    paths = camvid_paths(data_root, weights) if protocol.preset == "camvid" else (
        {"model": {"weights": str(Path(weights).resolve())}} if protocol.imagenet else {})
    overrides = merged(protocol.overrides, paths, S4AL, method.overrides, region, extra or {}, {"seed": seed})
    return load_config(protocol.preset, overrides)


def bench_run_dir(work: Path, name: str, method: str, seed: int) -> Path:
    return work / name / f"{method}_seed{seed}"


# ---- one cycle 0 for runs that differ only from the first acquisition on ------------------------
def cycle0_differences(a: RunConfig, b: RunConfig) -> list[str]:
    """The keys cycle 0's training can depend on where `a` and `b` differ: none, the same cycle 0."""
    return config_differences(a, b, ACQUISITION_ONLY)


def cycle0_mates(configs: dict[str, RunConfig], method: str) -> list[str]:
    """The other methods of `configs` (one protocol and seed) that train the same cycle 0 as `method`."""
    return [other for other, cfg in configs.items()
            if other != method and not cycle0_differences(cfg, configs[method])]


def cycle0_done(run_dir: Path) -> bool:
    """Cycle 0 finished: its summary follows the final cycle-0 checkpoint, never rewritten after."""
    return RunFolder(run_dir).cycle_summary_path(0).exists()


def any_cycle0_done(run_dirs: list[Path]) -> bool:
    return any(map(cycle0_done, run_dirs))


def cycle0_record(run_dir: Path) -> Path:
    """Beside a benchmark run's folder: the run that trained its cycle 0, where it took it from one."""
    return run_dir.with_name(run_dir.name + ".cycle0_from.json")


def adopt_cycle0(run, lenders: dict[str, Path], record: Path, label: str) -> None:
    """Before `run` (an ActiveLearningRun) trains its cycle 0: the first lender whose cycle 0 is
    finished and provably the same training (the same initial labels and pool, a final checkpoint
    trained with a config equal but for CYCLE0_MAY_DIFFER) gives that checkpoint, which `run` adopts
    as its own; the trainer resumes it at its last step and trains nothing. `record` names the run
    that trained that cycle 0 (the lender's own lender, where it took it too) and its train seconds.
    A run whose cycle 0 has begun keeps its own; without a lender it trains cycle 0 itself."""
    from s4al.train.checkpoint import AdoptionRefused, adopt_final_checkpoint

    if run.folder.checkpoint_path(0).exists():
        return
    record.unlink(missing_ok=True)  # from an adoption killed before its checkpoint was written
    for name, path in lenders.items():
        lender = RunFolder(path)
        if not cycle0_done(path):
            continue
        trained_by = cycle0_record(path)
        if trained_by.exists():  # the lender took it from another in turn
            write_json(record, json.loads(trained_by.read_text()))  # before the checkpoint that makes it true
        else:
            write_json(record, {"run": name, "train_seconds": json.loads(lender.cycle_summary_path(0).read_text())[
                "train_seconds"]})
        try:
            adopt_final_checkpoint(path, run.run_dir, run.cfg, cycle=0, may_differ=CYCLE0_MAY_DIFFER)
        except AdoptionRefused as refused:
            record.unlink()
            print(f"{label} cycle 0 not taken from {name}: {refused}", flush=True)
            continue
        print(f"{label} cycle 0 from {name}: its final checkpoint, the same training", flush=True)
        return


class Progress:
    """The trainer's progress callback: a plain line per evaluation and per ~10% of a cycle, and
    the duration of every step run in this process (for the per-cycle median step time)."""

    def __init__(self, label: str):
        self.label = label
        self.step_times: dict[int, list[float]] = defaultdict(list)  # each step's record's seconds since the start

    def __call__(self, record: dict) -> None:
        if record["event"] not in ("step", "eval"):  # pool scoring, images joining the run
            return
        cycle = record["cycle"]
        if record["event"] == "eval":
            print(f"{self.label} cycle {cycle} epoch {record['epoch']}: val mIoU {record['miou']:.4f}", flush=True)
            return
        self.step_times[cycle].append(record["seconds"])
        if record["step"] % max(1, record["total"] // 10) == 0:
            print(f"{self.label} cycle {cycle} step {record['step']}/{record['total']} "
                  f"loss/sup {record['loss/sup']:.3f} ({record['seconds'] / len(self.step_times[cycle]):.2f} s/step)",
                  flush=True)

    def timings(self) -> dict:
        return {str(cycle): {"steps": len(times), "median_step_seconds": float(np.median(step_durations(times)))}
                for cycle, times in self.step_times.items()}


def step_durations(times: list[float]) -> list[float]:
    """Each step's duration from the times its records carry: steps read back together (every
    READ_EVERY steps on a GPU) share one time, and share the time since the group before alike."""
    durations, before = [], 0.0
    for seconds, group in itertools.groupby(times):
        steps = len(list(group))
        durations += [(seconds - before) / steps] * steps
        before = seconds
    return durations


def device_name(device: str, visible: str | None = None) -> str:
    """The name of what the runs train on: the GPU as nvidia-smi names it (so that the window's own
    process, which starts processes, never initialises CUDA), else the CPU model. `visible`: the
    CUDA_VISIBLE_DEVICES the runs see (default: this process's), which nvidia-smi does not read."""
    if device == "cpu":
        return cpu_model()
    index = device.partition(":")[2] or "0"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    ids = [gpu.strip() for gpu in visible.split(",")] if visible else []
    index = ids[int(index)] if int(index) < len(ids) else index
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", index],
                                capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no NVIDIA GPU here
        listed = ""
    return listed or cpu_model()


def invocation_seconds(started: float) -> float:
    """The wall seconds of this run's invocation since `started` (time.perf_counter()), or since
    its process was started where a window started it (its start-up counts: the device waited)."""
    window_start = float(os.environ.get(STARTED_AT, "nan"))
    return max(time.perf_counter() - started, time.time() - window_start if math.isfinite(window_start) else 0.0)


def add_wall_seconds(path: Path, seconds: float) -> dict:
    """Adds one invocation's wall seconds to a run's running total (kept beside its run folder, so
    a run stopped and resumed over several invocations is charged for all of them)."""
    total = json.loads(path.read_text()) if path.exists() else {"wall_seconds": 0.0, "invocations": 0}
    total = {"wall_seconds": total["wall_seconds"] + seconds, "invocations": total["invocations"] + 1}
    write_json(path, total)
    return total


def run_one(name: str, method: str, seed: int, cfg: RunConfig, work: Path, out: Path, extra: dict,
            side_by_side: int = 1, mates: Sequence[str] = ()) -> None:
    """`mates`: the methods that may lend this run their cycle 0."""
    from s4al.active.cycle import ActiveLearningRun  # imports torch: not needed for --list or summarize.py

    run_dir = bench_run_dir(work, name, method, seed)
    resumed = RunFolder(run_dir).config_path.exists()
    label = f"[{name} {method} seed {seed}]"
    progress = Progress(label)
    record = cycle0_record(run_dir)
    started = time.perf_counter()
    try:
        with ActiveLearningRun(run_dir, cfg, progress=progress) as run:
            other_code = record_start(run.folder.starts_log, run.device, 1)
            if other_code:
                print(f"{label} note: {other_code}", flush=True)
            adopt_cycle0(run, {f"{m}_seed{seed}": bench_run_dir(work, name, m, seed) for m in mates}, record, label)
            summaries = run.run()
    finally:  # a run interrupted at a time limit is charged too
        cost = add_wall_seconds(run_dir.with_name(run_dir.name + ".seconds.json"), invocation_seconds(started))
    if len(summaries) != cfg.active.cycles + 1:
        raise RuntimeError(f"{run_dir}: {len(summaries)} of {cfg.active.cycles + 1} cycles finished")
    final = summaries[-1]
    lent = json.loads(record.read_text()) if record.exists() else None
    write_json(out, {
        "protocol": name,
        "method": method,
        "seed": seed,
        "method_overrides": METHODS[method].overrides,
        "extra_overrides": extra,
        "region": {"size": cfg.active.region_size, "per_image": cfg.active.regions_per_image},
        "final": {"labelled_fraction": final["labelled_fraction"], "miou": final["val"]["miou"],
                  "iou": final["val"]["iou"], **({"test_miou": final["test"]["miou"]} if "test" in final else {})},
        "cycles": summaries,
        "cycle0_from": lent["run"] if lent else None,  # the run that trained the cycle 0 this one resumed
        "timings": {"wall_seconds": time.perf_counter() - started, "resumed": resumed, "steps": progress.timings()},
        # what the run cost: every invocation's wall seconds, on this device, sharing it with
        # side_by_side - 1 other runs; a lent cycle 0 is the lender's cost, its training seconds named apart
        "cost": {**cost, "device": device_name(cfg.train.device), "side_by_side": side_by_side,
                 **({"cycle0_lender_train_seconds": lent["train_seconds"]} if lent else {})},
        "config": cfg.model_dump(mode="json"),
        "run_dir": str(run_dir),
        "starts": [start for _, start in json_lines(RunFolder(run_dir).starts_log) if start is not None],
        "machine": machine_info(),
    })
    print(f"[{name} {method} seed {seed}] final mIoU {final['val']['miou']:.4f} at "
          f"{100 * final['labelled_fraction']:.2f}% labelled -> {out}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=PROTOCOLS, help="cpu, paper (Table S2, GPU), synthetic or smoke (tests)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                        help="default: all, in the order of --list")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: the protocol's seed set")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a config override on top of every method, e.g. ssl.cold_start_epochs=1 "
                             "(repeatable); needs --name")
    parser.add_argument("--name", help="results and run subfolder, PROTOCOL_SOMETHING, for a variant or other "
                                       "data (default: the protocol)")
    parser.add_argument("--results", type=Path, help=f"default: {(RESULTS / 'label_efficiency').relative_to(REPO)}, "
                                                      "the committed results (smoke: WORK/results)")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench", help="run folders; default: %(default)s")
    parser.add_argument("--done", type=Path, metavar="RESULTS",
                        help="results made before (a folder like --results'): a run whose result file is there, "
                             "made with this run's configuration but for where data and weights are, the device "
                             "and loader workers, is skipped too")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                        help="CamVid; with a test/ split, test mIoU is reported too; default: %(default)s")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="encoder weights; default: %(default)s")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="run each (method, seed) as its own process, --parallel at a time on the one "
                             "device, and stop them all before SECONDS; a rerun skips what finished and "
                             "resumes the rest")
    parser.add_argument("--parallel", type=int, default=1, metavar="K",
                        help="with --time-limit: runs side by side (on each GPU of --gpus); default: %(default)s")
    parser.add_argument("--gpus", nargs="+", default=[], metavar="ID",
                        help="with --time-limit: spread the runs over these GPUs (CUDA_VISIBLE_DEVICES ids), "
                             "--parallel on each")
    parser.add_argument("--side-by-side", type=int, default=1, metavar="K",
                        help="set by --time-limit for its runs: how many shared the device (recorded)")
    parser.add_argument("--no-share-cycle0", action="store_true",
                        help="train every run's cycle 0, also where another run of the seed has trained the same "
                             "one (by default its final checkpoint is reused)")
    parser.add_argument("--list", action="store_true", help="print the protocols and methods, then exit")
    args = parser.parse_args(argv)
    if args.results is None:  # the smoke protocol checks the benchmark: its results never join the committed ones
        args.results = args.work / "results" if args.protocol == "smoke" else RESULTS / "label_efficiency"
    args.methods = list(dict.fromkeys(args.methods))  # a run named twice is run once
    args.seeds = args.seeds and list(dict.fromkeys(args.seeds))
    if not args.list and args.protocol is None:
        parser.error("--protocol is required")
    if args.overrides and args.name is None:
        parser.error("--set needs a --name, so variants never mix with the protocol's results")
    if args.name is not None and args.protocol and not args.name.startswith(f"{args.protocol}_"):
        parser.error(f"--name must start with '{args.protocol}_': results name the protocol they extend")
    if args.parallel < 1 or (args.parallel > 1 and args.time_limit is None):
        parser.error("--parallel K needs K >= 1 and --time-limit")
    if args.gpus and (args.time_limit is None or len(set(args.gpus)) < len(args.gpus)
                      or any(not gpu or "," in gpu or gpu != "".join(gpu.split()) for gpu in args.gpus)):
        parser.error("--gpus needs --time-limit and each GPU once, one ID an argument (--gpus 0 1)")
    if args.time_limit is not None and not 0 < args.time_limit < math.inf:
        parser.error(f"--time-limit {args.time_limit:g}: give the seconds the runs may take, a positive number")
    if args.seeds and min(args.seeds) < 0:
        parser.error(f"--seeds: a seed is a number >= 0, got {min(args.seeds)}")
    try:
        args.extra = parse_override(args.overrides)
    except ConfigError as err:
        parser.error(f"--set: {err}")
    if args.protocol and PROTOCOLS[args.protocol].preset == "camvid" and not (args.data_root / "train").is_dir():
        parser.error(f"CamVid not found at {args.data_root} (give --data-root)")
    weights_set = "weights" in args.extra.get("model", {})  # --set model.weights=... (null: a random init)
    if args.protocol and PROTOCOLS[args.protocol].needs_weights() and not weights_set and not args.weights.is_file():
        parser.error(f"ImageNet MobileNetV2 weights not found at {args.weights} (give --weights)")
    return args


def print_list() -> None:
    for name, protocol in PROTOCOLS.items():
        print(f"protocol {name}: preset {protocol.preset}, seeds {list(protocol.seeds)}, {protocol.overrides}")
    for name, method in METHODS.items():
        side, per_image = method.region
        print(f"method {name}: regions {side}x{side}x{per_image}, {method.overrides}")


def single_run_argv(args: argparse.Namespace, method: str, seed: int) -> tuple[str, ...]:
    """This script's command line for one (method, seed) of `args`, as --time-limit starts it."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--protocol", args.protocol, "--methods", method,
            "--seeds", str(seed), "--results", str(args.results), "--work", str(args.work),
            "--data-root", str(args.data_root), "--weights", str(args.weights), "--side-by-side", str(args.parallel)]
    for override in args.overrides:
        argv += ["--set", override]
    argv += ["--no-share-cycle0"] if args.no_share_cycle0 else []
    return tuple(argv + (["--name", args.name] if args.name else []))


def window_jobs(args: argparse.Namespace, name: str, todo: list[tuple[str, int, RunConfig]],
                mates: dict[tuple[str, int], list[str]]) -> list[Job]:
    """One job per run; a run with a mate queued before it is ready once some mate's cycle 0 is done."""
    logs, jobs, queued = args.work / name / "logs", [], [(method, seed) for method, seed, _ in todo]
    for k, (method, seed, cfg) in enumerate(todo):
        own = mates.get((method, seed), [])
        lenders = [bench_run_dir(args.work, name, m, seed) for m in own]
        after_a_mate = any((m, seed) in queued[:k] for m in own)
        jobs.append(Job(f"{method} seed {seed}", single_run_argv(args, method, seed), logs / f"{method}_seed{seed}.log",
                        ready=partial(any_cycle0_done, lenders) if after_a_mate else None,
                        # one that may resume a mate's cycle 0 takes less by an unknown part
                        seconds=None if after_a_mate else expected_seconds(args, name, method, seed, cfg)))
    return jobs


def expected_seconds(args: argparse.Namespace, name: str, method: str, seed: int, cfg: RunConfig) -> float | None:
    """How long the run of (method, seed), training its own cycle 0, is expected to take in the
    window: the median cost of the method's runs with other seeds (result files in --results and
    --done) made with this configuration but for the seed, on this device, with as many side by side,
    a lent cycle 0 counted at its lender's training seconds. None where there is none, or where the
    run has begun (a resumed run has part of its work done)."""
    if RunFolder(bench_run_dir(args.work, name, method, seed)).config_path.exists():
        return None
    seconds, device = [], None
    for path in [path for folder in (args.results, args.done) if folder
                 for path in sorted((folder / name).glob(f"{method}_seed*.json"))]:
        cost = _cost(path)
        if cost is None or cost.get("side_by_side") != args.parallel or not made_with(path, cfg, (*LOCAL_KEYS, "seed")):
            continue
        device = device or device_name(cfg.train.device, args.gpus[0] if args.gpus else None)
        if cost.get("device") == device:
            seconds.append(cost["wall_seconds"] + cost.get("cycle0_lender_train_seconds", 0.0))
    return float(np.median(seconds)) if seconds else None


def _cost(result_file: Path) -> dict | None:
    """What a result file says its run cost; None for a file that is no result."""
    try:
        cost = json.loads(result_file.read_text())["cost"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return cost if isinstance(cost, dict) and isinstance(cost.get("wall_seconds"), (int, float)) else None


def run_in_window(args: argparse.Namespace, name: str, todo: list[tuple[str, int, RunConfig]],
                  mates: dict[tuple[str, int], list[str]]) -> int:
    jobs = window_jobs(args, name, todo, mates)
    try:
        outcome = run_window(jobs, args.time_limit, args.parallel, report=lambda line: print(line, flush=True),
                             gpus=args.gpus)
    except KeyboardInterrupt:  # Ctrl-C or a TERM (a `timeout`): the window has stopped its runs, said above
        print(f"[{name}] interrupted: the runs it stopped resume, and those not started run, on a rerun", flush=True)
        return 130
    for what, labels in (("finished", outcome.finished), ("failed", outcome.failed),
                         ("stopped at the limit (rerun to resume)", outcome.stopped),
                         ("not started (rerun to run)", outcome.not_started),
                         ("not started, too little time left for them (rerun with more)", outcome.too_long)):
        if labels:
            print(f"[{name}] {what}: {', '.join(labels)}", flush=True)
    return 1 if outcome.failed else 3 if outcome.stopped or outcome.not_started or outcome.too_long else 0


# where a run of the same configuration may differ: what a resume may change but its cycle count,
# and how often it checkpoints (a resume is exact)
LOCAL_KEYS = (*(key for key in (*COMPUTED_ON_RESUME, *SAVED_ON_RESUME) if key != "active.cycles"),
              "train.checkpoint_every")


def made_with(result_file: Path, cfg: RunConfig, may_differ: Collection[str] = LOCAL_KEYS) -> bool:
    """Whether `result_file` exists and holds a run of `cfg` but for the keys `may_differ`."""
    return result_file.exists() and result_differences(result_file, cfg, may_differ) == []


def result_differences(result_file: Path, cfg: RunConfig, may_differ: Collection[str] = LOCAL_KEYS) -> list[str] | None:
    """The keys but `may_differ` in which the run of `result_file` differs from `cfg`, its config read
    as the run ran (s4al/config.py's migration); None for a file that is no result or one made with an
    option this s4al no longer has, set other than as s4al now works."""
    try:
        made = saved_config(json.loads(result_file.read_text())["config"], result_file)
    except (ConfigError, ValueError, KeyError, TypeError, AttributeError):  # not a result's config
        return None
    return run_differences(made, cfg, may_differ=may_differ)


def existing_run_refusal(result_file: Path, cfg: RunConfig, run_dir: Path) -> str | None:
    """Why an existing result cannot stand for a run of `cfg` (it is skipped otherwise), or an
    existing run folder without one cannot go on as it (it is resumed otherwise); else None."""
    if result_file.exists():
        differences = result_differences(result_file, cfg)
        if differences == []:
            return None
        made = ("is no result of this s4al's" if differences is None
                else f"holds a run of another configuration (differing in {first_of(differences, 4)})")
        return (f"{result_file} {made}: to run it again, delete it and its run folder {run_dir}; or give these "
                "runs another --name")
    folder = RunFolder(run_dir)
    if not folder.begun():  # its config alone, at most: a run made anew
        return None
    try:
        differences = config_differences(folder.config(), cfg)
    except RunFolderError as err:
        return f"{err}: delete the run folder {run_dir} to run it again"
    return (f"{run_dir} was made with another configuration (differing in {first_of(differences, 4)}): to run it "
            "again, delete it; or give these runs another --name") if differences else None


@cache
def this_code() -> dict:
    return code_version(REPO, ("s4al", "benchmarks"))


def code_change(result_file: Path) -> str:
    """' (made with ..., this checkout is ...)' where the result's code is known and other than now."""
    made = json.loads(result_file.read_text()).get("machine", {})
    now = this_code()
    if not made.get("git_commit") or "git_commit" not in now or code_text(made) == code_text(now):
        return ""
    return f" (made with {code_text(made)}; this checkout is {code_text(now)})"


def all_cycle0_mates(protocol: Protocol, seeds, args: argparse.Namespace, extra: dict) -> dict:
    """(method, seed) -> the methods of every METHODS entry (one the overrides make invalid left out)
    that train the same cycle 0 with that seed."""
    mates = {}
    for seed in seeds:
        configs = {}
        for method in METHODS:
            try:
                configs[method] = method_config(protocol, METHODS[method], seed, args.data_root, args.weights, extra)
            except ConfigError:
                continue
        mates |= {(method, seed): cycle0_mates(configs, method) for method in configs}
    return mates


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print_list()
        return 0
    protocol, name = PROTOCOLS[args.protocol], args.name or args.protocol
    seeds = args.seeds or protocol.seeds
    extra = args.extra
    # Validate every config before hours of training; seeds outermost, so a full table comes first.
    try:
        plan = [(m, s, method_config(protocol, METHODS[m], s, args.data_root, args.weights, extra))
                for s in seeds for m in args.methods]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    mates = {} if args.no_share_cycle0 else all_cycle0_mates(protocol, seeds, args, extra)
    refusals = [refusal for method, seed, cfg in plan
                if (refusal := existing_run_refusal(args.results / name / f"{method}_seed{seed}.json", cfg,
                                                    bench_run_dir(args.work, name, method, seed)))]
    for refusal in refusals:
        print(f"error: {refusal}", file=sys.stderr)
    if refusals:
        return 2
    todo = []
    for method, seed, cfg in plan:
        out = args.results / name / f"{method}_seed{seed}.json"
        done = args.done / name / out.name if args.done else None
        if out.exists():
            print(f"[{name} {method} seed {seed}] skipped: {out} exists{code_change(out)}", flush=True)
        elif done and made_with(done, cfg):
            print(f"[{name} {method} seed {seed}] skipped: {done} holds it", flush=True)
        else:
            todo.append((method, seed, cfg, out))
    if args.time_limit is not None:
        return run_in_window(args, name, [(method, seed, cfg) for method, seed, cfg, _ in todo], mates)
    failed = []
    for method, seed, cfg, out in todo:
        try:
            run_one(name, method, seed, cfg, args.work, out, extra, args.side_by_side,
                    mates.get((method, seed), []))
        except Exception:  # keep going: the other runs are independent; report at the end
            traceback.print_exc()
            failed.append(f"{method} seed {seed}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
