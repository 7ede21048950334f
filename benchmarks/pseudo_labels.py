"""How good are a trained network's pseudo labels? Argmax and max probability of a checkpoint's
teacher (or student) on train images, at full resolution without augmentation, against their
ground truth: one confusion matrix over all valid pixels and one over the confident pixels
(max probability above the threshold, as eta counts them).

Writes OUT/<name>.json (both matrices, per-class recall / precision / shares, where each class's
pixels go) and prints a table."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import RESULTS, machine_info, markdown_table, write_json
from s4al.data import build_dataset
from s4al.evaluate import image_batches, to_model_input
from s4al.metrics import confusion_meter
from s4al.ssl.mean_teacher import pseudo_labels_from_probs
from s4al.train.checkpoint import load_trained_model


@torch.no_grad()
def confusions(checkpoint: Path, network: str, images: int, threshold: float):
    """-> (class names and image indices, confusion over all valid pixels, over the confident ones)"""
    model, cfg = load_trained_model(checkpoint, network)
    train = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
    indices = list(range(0, len(train), max(1, len(train) // images)))[:images]  # evenly spread
    every, confident = (confusion_meter(train.classes.num_classes) for _ in range(2))
    for batch, labels, _ in image_batches(train, cfg.train.eval_batch_size, 0, indices):
        pseudo, confidence = pseudo_labels_from_probs(model(to_model_input(batch, torch.device("cpu"))).softmax(1))
        labels = labels.long()
        every.update(pseudo, labels)
        confident.update(pseudo[confidence > threshold], labels[confidence > threshold])
    return {"names": list(train.classes.names), "image_indices": indices}, every.compute(), confident.compute()


def per_class(matrix: torch.Tensor) -> dict:
    cm = matrix.double()
    total, gt, pred = cm.sum(), cm.sum(1), cm.sum(0)
    return {"recall": (cm.diag() / gt.clamp(min=1)).tolist(), "precision": (cm.diag() / pred.clamp(min=1)).tolist(),
            "gt_share": (gt / total).tolist(), "pred_share": (pred / total).tolist(),
            "row_shares": (cm / gt.clamp(min=1).unsqueeze(1)).tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="RUN_DIR/checkpoints/cycle_K.pt")
    parser.add_argument("--name", required=True, help="result file name")
    parser.add_argument("--network", choices=("teacher", "student"), default="teacher")
    parser.add_argument("--images", type=int, default=60, help="train images, evenly spread; default %(default)s")
    parser.add_argument("--threshold", type=float, default=0.97, help="confidence threshold; default %(default)s")
    parser.add_argument("--out", type=Path, default=RESULTS / "pseudo_labels", help="default %(default)s")
    args = parser.parse_args(argv)
    meta, every, confident = confusions(args.checkpoint, args.network, args.images, args.threshold)
    all_pixels, sure = per_class(every), per_class(confident)
    write_json(args.out / f"{args.name}.json", {
        **vars(args) | {"checkpoint": str(args.checkpoint), "out": str(args.out)}, **meta,
        "pixel_accuracy": float(every.diag().sum() / every.sum()),
        "confident_share": float(confident.sum() / every.sum()),
        "confident_accuracy": float(confident.diag().sum() / confident.sum().clamp(min=1)),
        "all": all_pixels | {"confusion": every.tolist()}, "confident": sure | {"confusion": confident.tolist()},
        "machine": machine_info(),
    })
    columns = [all_pixels["gt_share"], all_pixels["recall"], all_pixels["precision"], sure["recall"]]
    rows = [[name, *(f"{column[c]:.3f}" for column in columns)] for c, name in enumerate(meta["names"])]
    print(markdown_table(["class", "gt share", "recall", "precision", "recall where confident"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
