"""What do a run's bought labels add to its final training? Retrains the final cycle of a finished
run folder from its ledger with everything else the same (config, labelled images, pool, the student
it starts from, and the seeds of the cycle's batches, augmentations and initialisation), optionally
without the bought regions (`--without-regions`: the pool images train on pseudo labels alone),
optionally drawing its random streams as another cycle would (`--as-cycle K`), which measures how
much one final training's mIoU moves with the draw alone (a K below `ssl.balanced_from_cycle` also
turns the replay batch off, as in that cycle), and optionally with other training settings (`--set
ssl.KEY=VALUE`, repeatable), which compares learners on the same labels and draws.

The copy trains in WORK/<name> (the source run folder is not changed), resumes from its checkpoint
there, and writes OUT/<name>.json: the val mIoU and IoU per class, what was changed, the source
run's own final result, and the machine."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import REPO, RESULTS, machine_info, write_json
from label_efficiency import Progress
from s4al.active.cycle import ActiveLearningRun
from s4al.run_folder import RunFolder
from s4al.config import load_run_config, parse_override
from s4al.train.trainer import Trainer


def retrain(run_dir: Path, work: Path, without_regions: bool, as_cycle: int | None, overrides: dict) -> dict:
    with ActiveLearningRun(run_dir) as run:
        run.cfg = load_run_config(RunFolder(run_dir).config_path, overrides)  # in memory only: the folder keeps its config
        data = run.train_data(run.label_state())
        regions = sum(len(patches) for patches in data.annotations.values())
        if without_regions:
            data.annotations = {}
        final = run.final_cycle
        cycle = final if as_cycle is None else as_cycle
        started, progress = time.perf_counter(), Progress(f"[retrain {work.name}]")
        trainer = Trainer(run.cfg, data, run.val_set, work, cycle, run.cfg.cycle_epochs(final),
                          run.initial_student(final), progress)
        scores = trainer.fit().final_scores
        return {
            "source_run": str(run_dir),
            "final_cycle": final,
            "seeded_as_cycle": cycle,
            "without_regions": without_regions,
            "overrides": overrides,
            "regions_in_source": regions,
            "val": scores,
            "source_val": run.summaries()[final]["val"],
            "train_seconds": time.perf_counter() - started,
            "steps": progress.timings(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a finished run folder (e.g. runs/bench/PROTOCOL/METHOD_seedS)")
    parser.add_argument("--name", required=True, help="result file and work folder name")
    parser.add_argument("--without-regions", action="store_true", help="drop the bought regions from training")
    parser.add_argument("--as-cycle", type=int, help="draw batches, augmentations and initialisation as this cycle")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a training setting for the copy, e.g. ssl.alignment_target=labelled_x_predicted")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "retrain", help="default %(default)s")
    parser.add_argument("--out", type=Path, default=RESULTS / "retrain_final", help="default %(default)s")
    args = parser.parse_args(argv)
    overrides = parse_override(args.overrides)
    result = retrain(args.run_dir.resolve(), args.work / args.name, args.without_regions, args.as_cycle, overrides)
    write_json(args.out / f"{args.name}.json", result | {"machine": machine_info()})
    print(f"{args.name}: val mIoU {100 * result['val']['miou']:.1f} "
          f"(source run: {100 * result['source_val']['miou']:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
