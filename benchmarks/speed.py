"""Speed and memory on one machine, in one run (CamVid at 360x480 unless told otherwise):

(a) one SSL iteration (labelled + unlabelled + replay batch, Balanced ClassMix on) vs the sum of
    its pure model passes on the same tensors, and one supervised iteration, medians after warm-up,
    with each one's peak memory (with --profile N, also a torch.profiler table of N eager SSL iterations);
    for the loader path (train.fast off) and, by default on a GPU, the fast path side by side, eager
    and (on a GPU) with its passes replayed as CUDA graphs;
(b) pool-scoring throughput (s4al.acquisition.pool.score_cells) vs plain inference on the same
    images at the same batch size, on tensors already in memory and on images read by the same loader;
(c) peak memory of pool scoring for pools of several sizes, each in a fresh process;
(d) data-loading throughput of the training loaders alone vs the training step rate;
(e) a whole S4AL run of the config's protocol on each path, estimated from (a) and (b).

Writes OUT/speed/<machine-tag>.json and a Markdown summary beside it, after each part; a part
that fails is recorded there and the others still run."""

from __future__ import annotations

import argparse
import gc
import itertools
import multiprocessing
import statistics
import tempfile
import time
import traceback
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from common import (
    CAMVID_SIZE, DEFAULT_DATA_ROOT, DEFAULT_WEIGHTS, RESULTS, SMOKE_OVERRIDES, camvid_paths, machine_info,
    machine_tag, markdown_table, merged, write_json,
)
from s4al.acquisition.pool import score_cells, scoring_workers
from s4al.active.opening import draw_initial
from s4al.config import RunConfig, load_config
from s4al.data import build_dataset
from s4al.data.base import SegmentationDataset
from s4al.data.batches import image_batches, to_model_input
from s4al.inference import inference_cache
from s4al.evaluate import evaluate
from s4al.model import build_model
from s4al.ssl.losses import supervised_loss
from s4al.seeding import derive_seed
from s4al.train.batches import StepBatch
from s4al.train.trainer import Trainer
from s4al.train.data import TrainData

FULL = {"height": 360, "width": 480, "iters": 10, "warmup": 2, "score_images": 100, "pools": [100, 1000, 2000],
        "load_batches": 40}
SMOKE = {"height": 48, "width": 64, "iters": 2, "warmup": 1, "score_images": 8, "pools": [8, 16], "load_batches": 2}
MIB = 2**20
SCORING_ROUNDS = 3  # (b): each throughput is the median of this many alternated passes over the images


# ---- measuring ----------------------------------------------------------------------------------
def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _status_mib(field: str) -> float:
    """A memory line of /proc/self/status (Linux), in MiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def memory_start(device: torch.device) -> float:
    """Resets the peak and returns the baseline: allocated CUDA memory on a GPU; else the resident
    set, whose high-water mark (VmHWM, what ru_maxrss reports, but without the part a spawned
    process inherits from its parent) is reset through /proc/self/clear_refs."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / MIB
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def memory_increase(baseline: float, device: torch.device) -> dict:
    """Peak since memory_start and its increase over the baseline."""
    if device.type == "cuda":
        kind, peak = "cuda_max_allocated", torch.cuda.max_memory_allocated(device) / MIB
    else:
        kind, peak = "rss_high_water", _status_mib("VmHWM")
    # The kernel's resident-set counters are per-CPU approximations, so a high-water mark read
    # after the baseline can come out a few pages below it; the peak since the start is at least the start.
    peak = max(peak, baseline)
    return {"kind": kind, "baseline_mib": round(baseline, 1), "peak_mib": round(peak, 1),
            "increase_mib": round(peak - baseline, 1)}


class Repeated(SegmentationDataset):
    """A pool of `size` images cycling through `base`, so that any pool size can be scored."""

    def __init__(self, base: SegmentationDataset, size: int):
        self.base, self.size, self.classes = base, size, base.classes

    def __len__(self) -> int:
        return self.size

    def image_id(self, index: int) -> str:
        return f"{self.base.image_id(index % len(self.base))}#{index}"

    def image_size(self, index: int) -> tuple[int, int]:
        return self.base.image_size(index % len(self.base))

    def load(self, index: int):
        return self.base.load(index % len(self.base))

    def load_image(self, index: int):
        return self.base.load_image(index % len(self.base))

    def load_label(self, index: int):
        return self.base.load_label(index % len(self.base))


# ---- (a) and (d): the training iteration ----------------------------------------------------------
def replay_trainer(cfg: RunConfig, run_dir: Path) -> Trainer:
    """A trainer on the initial split, in a cycle and at a step where the replay batch and Balanced
    ClassMix are on (the most expensive iteration of the method): one epoch after they start, so
    that the replay buffer holds images. With SSL off: a supervised trainer."""
    train_set = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
    labelled = draw_initial(len(train_set), cfg.active.initial_fraction, cfg.seed)
    pool = sorted(set(range(len(train_set))) - set(labelled))
    trainer = Trainer(cfg, TrainData(train_set, labelled, pool), None, run_dir, cycle=cfg.ssl.balanced_from_cycle)
    trainer.step = trainer.iters * (max(cfg.ssl.balanced_from_epoch, cfg.ssl.cold_start_epochs) + 1)
    return trainer


def batch_source(trainer: Trainer, count: int) -> Iterator[StepBatch]:
    """`count` steps' batches, whose next() does what a step's batches cost the training loop: on
    the fast path the draws and the augmentation on the device; on the loader path the copy to the
    device, its host batches (made by loader workers beside training) being loaded before."""
    if trainer.fast:
        return trainer.batches()
    labelled, unlabelled = trainer.source.loaders(trainer.step)
    host = deque(next(labelled) | (next(unlabelled) if unlabelled else {}) for _ in range(count))
    handed = (host.popleft() for _ in range(count))  # each released after its step, as in training
    return (StepBatch(n["labelled"], n.get("unlabelled"), n.get("replay")) for n in map(trainer.source.to_device, handed))


def student_pass(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> None:
    trainer.student.zero_grad(set_to_none=trainer.grads_to_none)
    trainer.student_pass.backward(supervised_loss(trainer.forward(images), labels))


def pure_passes(trainer: Trainer, batches: Iterator[StepBatch], count: int, warmup: int) -> dict[str, float]:
    """Median seconds of each model pass of the iteration, inputs already on the device."""
    seconds = defaultdict(list)
    for k in range(count):
        batch = next(batches)
        images, labels = batch.labelled["image"], batch.labelled["label"].long()
        strong, replay = batch.unlabelled["strong"], batch.replay["strong"]
        weak = torch.cat([batch.unlabelled["weak"], batch.replay["weak"]])
        targets = torch.zeros(strong.shape[0], *strong.shape[-2:], dtype=torch.long, device=trainer.device)
        passes = {
            "student_labelled": lambda: student_pass(trainer, images, labels),
            "student_unlabelled_mixed": lambda: student_pass(trainer, strong, targets),
            "student_replay_mixed": lambda: student_pass(trainer, replay, targets),
            "teacher_unlabelled_and_replay": lambda: trainer.teacher_pass(weak),
        }
        for name, run in passes.items():
            elapsed = timed(run, trainer.device)
            if k >= warmup:
                seconds[name].append(elapsed)
    return {name: statistics.median(values) for name, values in seconds.items()}


def timed_steps(trainer: Trainer, iters: int, warmup: int, replay: bool) -> tuple[list[float], dict]:
    """Seconds of each of warmup + iters training steps (batches included as batch_source says)
    and the peak memory over them."""
    device, first, batches = trainer.device, trainer.step, batch_source(trainer, warmup + iters)
    batches = itertools.chain([next(batches)], batches)  # the fast path's device cache is made before the baseline

    def step(k: int) -> None:
        batch = next(batches)
        if replay and batch.replay is None:
            raise RuntimeError(f"expected an unlabelled and a replay batch at step {first + k}")
        trainer.train_step(first + k, *batch)

    baseline = memory_start(device)
    times = [timed(lambda: step(k), device) for k in range(warmup + iters)]
    return times[warmup:], memory_increase(baseline, device)


def ssl_iteration(trainer: Trainer, iters: int, warmup: int) -> dict:
    with trainer.cudnn_tuned():  # as in Trainer.fit
        times, memory = timed_steps(trainer, iters, warmup, replay=True)
        passes = pure_passes(trainer, batch_source(trainer, warmup + iters), warmup + iters, warmup)
    iteration, total = statistics.median(times), sum(passes.values())
    return {"iteration_seconds_median": iteration, "passes_seconds_median": passes, "passes_sum_seconds": total,
            "ratio": iteration / total, "iteration_seconds": times, "memory": memory,
            "cuda_graphs": trainer.replaying()}


def supervised_iteration(trainer: Trainer, iters: int, warmup: int) -> dict:
    with trainer.cudnn_tuned():
        times, memory = timed_steps(trainer, iters, warmup, replay=False)
    return {"iteration_seconds_median": statistics.median(times), "iteration_seconds": times, "memory": memory}


def profile_iterations(trainer: Trainer, count: int, out: Path) -> None:
    """`count` SSL iterations (after one warm-up) under torch.profiler: the operators that take the
    host's time and, on a GPU, the device's, as tables in OUT (where the iteration's overhead over
    its passes goes)."""
    batches = batch_source(trainer, count + 1)
    cuda = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with trainer.cudnn_tuned():
        trainer.train_step(trainer.step, *next(batches))  # warm-up
        with profile(activities=activities) as prof:
            for k in range(1, count + 1):
                trainer.train_step(trainer.step + k, *next(batches))
            if cuda:
                torch.cuda.synchronize(trainer.device)
    events = prof.key_averages()
    keys = ["self_cpu_time_total"] + (["self_device_time_total"] if cuda else [])
    path = f"train.fast {trainer.cfg.train.fast} ({'fast path' if trainer.fast else 'loader path'}), CUDA graphs " \
        f"{'on' if trainer.replaying() else 'off'}"
    tables = [f"{count} iterations, {path}, by {key}\n{events.table(sort_by=key, row_limit=40)}\n" for key in keys]
    out.write_text("".join(tables))


def data_loading(trainer: Trainer, batches: int, warmup: int) -> dict:
    """Steps per second of the labelled + unlabelled (+ replay) loaders with nothing else running;
    after `warmup` steps, so worker start-up is excluded (prefetched batches flatter it slightly)."""
    labelled, unlabelled = trainer.source.loaders(trainer.step)
    for _ in range(warmup):
        next(labelled), next(unlabelled)
    started = time.perf_counter()
    for _ in range(batches):
        next(labelled), next(unlabelled)
    return {"batches": batches, "num_workers": trainer.cfg.train.num_workers,
            "loader_steps_per_s": batches / (time.perf_counter() - started)}


# ---- (b) and (c): pool scoring ------------------------------------------------------------------
def scoring_setup(cfg: RunConfig, images: int) -> tuple[torch.nn.Module, Repeated, torch.device]:
    device = torch.device(cfg.train.device)
    dataset = Repeated(build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed), images)
    model = build_model(cfg.model, dataset.classes.num_classes).to(device).eval()
    return model, dataset, device


def score_pool(model, dataset: Repeated, cfg: RunConfig, device: torch.device, num_workers: int, fast: str = "off") -> None:
    score_cells(model, dataset, range(len(dataset)), {}, cfg.active, device, derive_seed(cfg.seed, "speed"), num_workers,
                fast=fast)


@torch.no_grad()
def forward_all(model, inputs: list[torch.Tensor]) -> None:
    for x in inputs:
        model(x)


@torch.no_grad()
def forward_read(model, dataset: Repeated, batch_size: int, device: torch.device, num_workers: int) -> None:
    """Plain inference on images read by the loader that scoring uses: on a GPU, where reading
    and decoding the images can take longer than the network, the part of scoring's time that is
    not reading."""
    pin = device.type == "cuda"
    for x, _, _ in image_batches(dataset, batch_size, num_workers, range(len(dataset)), labels=False, pin_memory=pin):
        model(to_model_input(x, device))


def pool_scoring(cfg: RunConfig, images: int, fast: bool) -> dict:
    """(b), and evaluation on the same images; with `fast`, both also from the device cache
    (decoded once, timed apart) as the fast path reads them."""
    model, dataset, device = scoring_setup(cfg, images)
    batch_size, workers = cfg.active.score_batch_size, scoring_workers(device, cfg.train.num_workers)
    inputs = [to_model_input(x, device) for x, _, _ in image_batches(dataset, batch_size, 0, range(images), labels=False)]
    forward_all(model, inputs[:1])  # warm-up
    eval_batch = cfg.train.eval_batch_size
    runs = {
        "plain": lambda: forward_all(model, inputs),
        "plain_read": lambda: forward_read(model, dataset, batch_size, device, workers),
        "scoring": lambda: score_pool(model, dataset, cfg, device, workers),
        "evaluation": lambda: evaluate(model, dataset, eval_batch, device, workers, fast="off"),
    }
    cached = {}
    if fast:
        cached["cache_decode_s"] = timed(lambda: inference_cache(dataset, device, "on", True, workers), device)
        runs["scoring_cached"] = lambda: score_pool(model, dataset, cfg, device, workers, fast="on")
        runs["evaluation_cached"] = lambda: evaluate(model, dataset, eval_batch, device, workers, fast="on")
    times = {name: [] for name in runs}
    for _ in range(SCORING_ROUNDS):  # alternated, so that a drift of the machine's speed hits all alike
        for name, run in runs.items():
            times[name].append(timed(run, device))
    median = {name: statistics.median(times[name]) for name in runs}
    plain, read, scoring = median["plain"], median["plain_read"], median["scoring"]
    return {"images": images, "batch_size": batch_size, "metric": cfg.active.metric, "num_workers": workers,
            "rounds": SCORING_ROUNDS, **{f"{name}_images_per_s": images / median[name] for name in runs}, **cached,
            "time_ratio": scoring / plain, "time_ratio_read": scoring / read}


def pool_memory(cfg_data: dict, images: int) -> dict:
    """Run in a fresh process: peak memory of scoring a pool of `images`, over the baseline after
    the model is built. No loader workers, so everything is in this process's high-water mark."""
    cfg = RunConfig.model_validate(cfg_data)
    model, dataset, device = scoring_setup(cfg, images)
    baseline = memory_start(device)
    score_pool(model, dataset, cfg, device, num_workers=0)
    return {"images": images, **memory_increase(baseline, device)}


def in_fresh_process(fn, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---- the run ------------------------------------------------------------------------------------
def with_settings(cfg: RunConfig, settings: dict) -> RunConfig:
    return RunConfig.model_validate(merged(cfg.model_dump(mode="json"), settings))


def iterations(cfg: RunConfig, run_dir: Path, args: argparse.Namespace) -> dict:
    """(a) on the path cfg.train.fast names: the SSL iteration, then the supervised one."""
    ssl = ssl_iteration(replay_trainer(cfg, run_dir), args.iters, args.warmup)
    gc.collect()  # the SSL trainer's graphs and device cache hold memory through reference cycles
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    supervised = supervised_iteration(
        replay_trainer(with_settings(cfg, {"ssl": {"enabled": False}}), run_dir), args.iters, args.warmup
    )
    return {"ssl_iteration": ssl, "supervised_iteration": supervised}


def iterations_of(cfg_data: dict, run_dir: str, args: argparse.Namespace) -> dict:
    """iterations() from a config as JSON, for a fresh process."""
    return iterations(RunConfig.model_validate(cfg_data), Path(run_dir), args)


def run_counts(cfg: RunConfig) -> dict:
    """What a whole S4AL run of `cfg` does, counted: its supervised (cold-start) and SSL steps, its
    evaluations, its pool scorings and the images each reads."""
    train = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
    val = build_dataset(cfg.dataset, cfg.dataset.val_split, cfg.seed)
    t, cycles = cfg.train, range(cfg.active.cycles + 1)
    epochs = [cfg.cycle_epochs(c) for c in cycles]
    cold = [min(cfg.ssl.cold_start_epochs, e) for e in epochs]
    return {"cycles": len(epochs), "supervised_steps": sum(cold) * t.iters_per_epoch,
            "ssl_steps": sum(e - c for e, c in zip(epochs, cold)) * t.iters_per_epoch,
            "evaluations": sum(-(-e // t.eval_every) for e in epochs), "val_images": len(val),
            "pool_scorings": cfg.active.cycles, "pool_images": round(len(train) * (1 - cfg.active.initial_fraction))}


def whole_run_seconds(counts: dict, path: dict, scoring: dict | None, cached: bool) -> float | None:
    """A whole S4AL run's seconds on one path, from its measured parts: its steps at their medians
    (every SSL step at the replay step's, the dearer), evaluations and pool scorings at (b)'s rates;
    start-up and checkpoints left out. None until (a) and (b) are measured."""
    if not path or scoring is None or (cached and "scoring_cached_images_per_s" not in scoring):
        return None
    kind = "_cached" if cached else ""
    return (counts["supervised_steps"] * path["supervised_iteration"]["iteration_seconds_median"]
            + counts["ssl_steps"] * path["ssl_iteration"]["iteration_seconds_median"]
            + counts["evaluations"] * counts["val_images"] / scoring[f"evaluation{kind}_images_per_s"]
            + counts["pool_scorings"] * counts["pool_images"] / scoring[f"scoring{kind}_images_per_s"])


def speed_config(args: argparse.Namespace, device: str) -> RunConfig:
    """The camvid preset (or the smoke config) at HxW, with replay and Balanced ClassMix on."""
    h, w = args.height, args.width
    # epochs: enough steps after replay starts for the sampler to draw the measured batches from
    train = {"crop_size": [h, w], "device": device, "epochs": 100}
    if args.workers is not None:
        train["num_workers"] = args.workers
    settings = {"train": train,
                "ssl": {"enabled": True, "classmix": True, "balanced_classmix": True, "replay": True}}
    if args.smoke:
        size = {"dataset": {"synthetic": {"height": h, "width": w}}}
        return load_config("demo", merged(SMOKE_OVERRIDES, size, settings))
    resize = {"dataset": {"resize": None if (h, w) == CAMVID_SIZE else [h, w]}}
    return load_config("camvid", merged(camvid_paths(args.data_root, args.weights), resize, settings))


def iteration_rows(*paths: dict | None) -> list[list[str]]:
    """(a) as rows of measure and one column per path (empty where a path was not timed)."""
    paths = [p or {} for p in paths]

    def row(name: str, value) -> list[str]:
        return [name, *(value(p) if p else "" for p in paths)]

    def memory(p: dict) -> str:
        m = p["memory"]
        return f"{m['peak_mib']:.0f} MiB (+{m['increase_mib']:.0f} over baseline, {m['kind']})"

    a = next(p for p in paths if p)["ssl_iteration"]
    return [
        row("(a) SSL iteration, median", lambda p: f"{1000 * p['ssl_iteration']['iteration_seconds_median']:.1f} ms"),
        row("(a) sum of pure model passes", lambda p: f"{1000 * p['ssl_iteration']['passes_sum_seconds']:.1f} ms"),
        *[row(f"(a)   {name}", lambda p, name=name: f"{1000 * p['ssl_iteration']['passes_seconds_median'][name]:.1f} ms")
          for name in a["passes_seconds_median"]],
        row("(a) passes replayed as CUDA graphs", lambda p: "yes" if p["ssl_iteration"]["cuda_graphs"] else "no"),
        row("(a) iteration / passes (target <= 1.15)", lambda p: f"{p['ssl_iteration']['ratio']:.3f}"),
        row("(a) SSL iteration peak memory", lambda p: memory(p["ssl_iteration"])),
        row("(a) supervised iteration, median",
            lambda p: f"{1000 * p['supervised_iteration']['iteration_seconds_median']:.1f} ms"),
        row("(a) supervised iteration peak memory", lambda p: memory(p["supervised_iteration"])),
    ]


def whole_run_row(r: dict, paths: tuple) -> list[list[str]]:
    """(e): a whole run's minutes on each path, where its parts are measured."""
    counts = r["settings"].get("whole_run")
    minutes = [whole_run_seconds(counts, p, r.get("pool_scoring"), cached=k > 0) if counts else None
               for k, p in enumerate(paths)]
    if not any(m is not None for m in minutes):
        return []
    return [["(e) a whole S4AL run, estimated from (a) and (b)",
             *("" if m is None else f"{m / 60:.1f} min" for m in minutes)]]


def scoring_rows(b: dict, eval_batch_size: int) -> list[list[str]]:
    return [
        [f"(b) pool scoring (score_cells), median of {b['rounds']} alternated passes", f"{b['scoring_images_per_s']:.2f} images/s"],
        ["(b) plain inference", f"{b['plain_images_per_s']:.2f} images/s"],
        ["(b) scoring time / inference time", f"{b['time_ratio']:.3f}"],
        ["(b) plain inference on images read by the scoring loader", f"{b['plain_read_images_per_s']:.2f} images/s"],
        ["(b) scoring time / that inference time", f"{b['time_ratio_read']:.3f}"],
        [f"(b) evaluation (batch {eval_batch_size})", f"{b['evaluation_images_per_s']:.2f} images/s"],
        *([["(b) pool scoring from the device cache (fast path; bf16 on a GPU)",
            f"{b['scoring_cached_images_per_s']:.2f} images/s"],
           ["(b) evaluation from the device cache (fast path; bf16 on a GPU)",
            f"{b['evaluation_cached_images_per_s']:.2f} images/s"],
           ["(b) decoding the images into the device cache, once", f"{b['cache_decode_s']:.2f} s"]]
          if "cache_decode_s" in b else []),
    ]


def summary_markdown(r: dict) -> str:
    """The result as tables of what was measured, then what was not and what failed."""
    s, m = r["settings"], r["machine"]
    parts = [f"# Speed: {r['tag']}\n\n{m['cpu']} ({m['cpus_usable']} CPUs), GPU: {m['gpu'] or 'none'}, device "
             f"{s['device']}, {s['height']}x{s['width']}, batch {s['batch_size']} + {s['unlabelled_batch_size']} + "
             f"{s['unlabelled_batch_size']} replay, alignment {s['alignment']}, class-normalised weights "
             f"{s['class_normalised_confidence']}, torch {m['torch']}, {m['date']}"]
    paths = (r if "ssl_iteration" in r else None, r.get("fast"), r.get("fast_graphs"))
    if any(paths):
        parts.append(markdown_table(["measure", "loader path (train.fast off)", "fast path, eager (cuda_graphs false)",
                                     "fast path, CUDA graphs"], [*iteration_rows(*paths), *whole_run_row(r, paths)]))
        if "whole_run" in s:
            c = s["whole_run"]
            parts.append(f"(e) counts {c['cycles']} cycles: {c['supervised_steps']:,} supervised (cold-start) steps and "
                         f"{c['ssl_steps']:,} SSL steps (each at the replay step's median), {c['evaluations']} "
                         f"evaluations of {c['val_images']} images and {c['pool_scorings']} scorings of "
                         f"{c['pool_images']} pool images at (b)'s rates (the fast paths' from the device cache, in "
                         "bf16); start-up and checkpoints are left out.")
    d = r.get("data_loading")
    rows = [*(scoring_rows(r["pool_scoring"], s["eval_batch_size"]) if "pool_scoring" in r else []),
            *[[f"(c) scoring memory, pool of {p['images']}", f"+{p['increase_mib']:.0f} MiB ({p['kind']})"]
              for p in r.get("pool_memory", [])],
            *([["(d) loaders alone", f"{d['loader_steps_per_s']:.2f} steps/s ({d['num_workers']} workers)"]] if d else []),
            *([["(d) training", f"{d['train_steps_per_s']:.2f} steps/s"]] if d and "train_steps_per_s" in d else [])]
    if rows:
        parts.append(markdown_table(["measure", "value"], rows))
    if r.get("pending"):
        parts.append(f"Not measured (the run stopped before them): {', '.join(r['pending'])}.")
    parts += [f"{name} failed: `{trace.strip().splitlines()[-1]}`" for name, trace in r.get("errors", {}).items()]
    return "\n\n".join(parts) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--height", type=int, help=f"default {FULL['height']} (smoke {SMOKE['height']})")
    parser.add_argument("--width", type=int, help=f"default {FULL['width']} (smoke {SMOKE['width']})")
    parser.add_argument("--iters", type=int, help=f"timed iterations after warm-up; default {FULL['iters']}")
    parser.add_argument("--warmup", type=int, help=f"default {FULL['warmup']}")
    parser.add_argument("--score-images", type=int, help=f"images for (b); default {FULL['score_images']}")
    parser.add_argument("--pools", type=int, nargs="+", help=f"pool sizes for (c); default {FULL['pools']}")
    parser.add_argument("--load-batches", type=int, help=f"loader steps for (d); default {FULL['load_batches']}")
    parser.add_argument("--workers", type=int, help="loader workers for (b) on a GPU and (d); default the preset's")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile N SSL iterations into OUT/speed/TAG-profile.txt")
    parser.add_argument("--fast", action=argparse.BooleanOptionalAction,
                        help="also time (a) on the fast path (train.fast on); default: on a GPU")
    parser.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True,
                        help="on a GPU, also time the fast path with CUDA graphs; "
                             "default: %(default)s")
    parser.add_argument("--smoke", action="store_true", help="tiny synthetic sizes: checks that the script works")
    parser.add_argument("--out", type=Path, default=RESULTS, help="writes OUT/speed/TAG.json; default %(default)s")
    parser.add_argument("--tag", help="machine tag for the file name (default: from the CPU or GPU name)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="CamVid; default %(default)s")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="default %(default)s")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def measures(cfg: RunConfig, args: argparse.Namespace, run_dir: Path, profile_path: Path) -> dict:
    """What the run measures, each a call that returns its part of the result, the fast path first.
    On a GPU the fast path is timed by default, eager, then with CUDA graphs (unless --no-graphs)."""
    cuda = cfg.train.device.startswith("cuda")
    timing_fast = cuda if args.fast is None else args.fast
    loader_cfg = with_settings(cfg, {"train": {"fast": "off"}})
    if not args.graphs:
        cfg = with_settings(cfg, {"train": {"cuda_graphs": False}})
    parts = {}
    if timing_fast:  # eager first: its numbers stand even if a capture went wrong and took the device with it
        parts["fast"] = lambda: iterations(
            with_settings(cfg, {"train": {"fast": "on", "cuda_graphs": False}}), run_dir, args)
    if timing_fast and cuda and args.graphs:  # in a process of its own: a capture that breaks the device
        # (an illegal address is sticky) takes no later part with it
        parts["fast_graphs"] = lambda: in_fresh_process(
            iterations_of, with_settings(cfg, {"train": {"fast": "on"}}).model_dump(mode="json"), str(run_dir), args)
    parts["loader"] = lambda: iterations(loader_cfg, run_dir, args)
    parts["data_loading"] = lambda: data_loading(replay_trainer(loader_cfg, run_dir), args.load_batches, args.warmup)
    parts["pool_scoring"] = lambda: pool_scoring(cfg, args.score_images, timing_fast)
    parts["pool_memory"] = lambda: [in_fresh_process(pool_memory, cfg.model_dump(mode="json"), n) for n in args.pools]
    if args.profile:  # the path the device takes by default, its passes eager: a replayed graph is one opaque
        # launch to the profiler, and profiling graph replays has crashed or hung in some torch versions
        eager = with_settings(cfg, {"train": {"cuda_graphs": False}})
        parts["profile"] = lambda: profile_iterations(replay_trainer(eager, run_dir), args.profile, profile_path)
    return parts


def main(argv: list[str] | None = None) -> int:
    """Measures one part after another and rewrites the result files after each, so that a run
    stopped at a time limit keeps what it measured; a part that fails is recorded under `errors`
    (the rest still run) and makes the exit status 1."""
    args = parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = speed_config(args, device)
    info = machine_info()
    tag = args.tag or machine_tag(info, device) + ("-smoke" if args.smoke else "")
    out = args.out / "speed" / f"{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    result = {
        "tag": tag,
        "settings": {"device": device, "height": args.height, "width": args.width, "iters": args.iters,
                     "warmup": args.warmup, "batch_size": t.batch_size, "eval_batch_size": t.eval_batch_size,
                     "unlabelled_batch_size": t.unlabelled_batch_size, "num_workers": t.num_workers,
                     "dataset": cfg.dataset.name, "smoke": args.smoke,
                     "alignment": cfg.ssl.distribution_alignment,
                     "class_normalised_confidence": cfg.ssl.class_normalised_confidence,
                     "whole_run": run_counts(cfg)},
        "machine": info, "fast": None, "fast_graphs": None, "errors": {},
    }
    with tempfile.TemporaryDirectory() as run_dir:  # the trainer writes nothing unless fit() runs
        parts = measures(cfg, args, Path(run_dir), out.with_name(f"{tag}-profile.txt"))
        for done, (name, measure) in enumerate(parts.items()):
            result["pending"] = list(parts)[done:]
            write_results(result, out)
            print(f"-- {name}", flush=True)
            try:
                measured = measure()
            except Exception:  # recorded; a failure of one part (e.g. a CUDA graph) leaves the others
                result["errors"][name] = traceback.format_exc()
                traceback.print_exc()
                continue
            finally:
                release_memory(torch.device(device))
            if name == "loader":  # the loader path's iterations stay at the top, as in earlier files
                result.update(measured)
            elif name != "profile":
                result[name] = measured
    result["pending"] = []
    write_results(result, out)
    print(f"{out.with_suffix('.md').read_text()}\nwrote {out} and {out.with_suffix('.md')}")
    return 1 if result["errors"] else 0


def release_memory(device: torch.device) -> None:
    """What a part left (its trainers, caches and CUDA graphs' pools), so the next one starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def write_results(result: dict, out: Path) -> None:
    if "ssl_iteration" in result and "data_loading" in result:
        result["data_loading"]["train_steps_per_s"] = 1 / result["ssl_iteration"]["iteration_seconds_median"]
    write_json(out, result)
    out.with_suffix(".md").write_text(summary_markdown(result))


if __name__ == "__main__":
    raise SystemExit(main())
