"""How good are a trained network's pseudo labels? Argmax and max probability of a checkpoint's
teacher (or student) on train images, at full resolution without augmentation, against their
ground truth: one confusion matrix over all valid pixels and one over the confident pixels
(max probability above the threshold, as eta counts them). With --argmax-alignment also the
pseudo labels after per-class log-offsets that give each class its ground-truth share of the
argmax (what `ssl.distribution_alignment: argmax` steers towards during training, here solved
offline. --align-to says to which class shares: these images' own (`images`, an oracle), those of
the run's labelled images (`labelled`, the target that training uses), or the geometric mean of
those and the network's mean class probabilities on these images (`labelled_x_predicted`, a
candidate target that leans less on a small labelled set).

Writes OUT/<name>.json (both matrices, per-class recall / precision / shares, where each class's
pixels go) and prints a table."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from class_shares import initially_labelled
from common import RESULTS, machine_info, markdown_table, write_json
from s4al.run_folder import RunFolder
from s4al.config import load_run_config
from s4al.data import build_dataset
from s4al.data.classes import IGNORE_INDEX
from s4al.data.batches import image_batches, to_model_input
from s4al.metrics import Confusion
from s4al.ssl.alignment import ArgmaxAlignment
from s4al.ssl.mean_teacher import pseudo_labels_from_probs
from s4al.train.checkpoint import load_trained_model
from s4al.train.data import TrainData, labelled_class_counts


@torch.no_grad()
def teacher_outputs(checkpoint: Path, network: str, images: int):
    """-> (class names and image indices, log-probabilities (I, C, H, W) half, labels (I, H, W))"""
    model, cfg = load_trained_model(checkpoint, network)
    train = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
    indices = list(range(0, len(train), max(1, len(train) // images)))[:images]  # evenly spread
    log_probs, labels = [], []
    for batch, batch_labels, _ in image_batches(train, cfg.train.eval_batch_size, 0, indices):
        log_probs.append(model(to_model_input(batch, torch.device("cpu"))).log_softmax(1).half())
        labels.append(batch_labels.long())
    return {"names": list(train.classes.names), "image_indices": indices}, torch.cat(log_probs), torch.cat(labels)


def labelled_counts(checkpoint: Path) -> torch.Tensor:
    """(C,) class pixel counts of the initially labelled images of the checkpoint's run."""
    run_dir = checkpoint.parent.parent  # RUN_DIR/checkpoints/cycle_K.pt
    cfg = load_run_config(RunFolder(run_dir).config_path)
    train = build_dataset(cfg.dataset, cfg.dataset.train_split, cfg.seed)
    whole, _ = labelled_class_counts(TrainData(train, initially_labelled(run_dir, train), []), train.classes.num_classes)
    return torch.from_numpy(whole)


def labelled_x_predicted(checkpoint: Path, log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(C,) geometric mean of the labelled shares and the mean predicted probabilities on the valid pixels."""
    labelled = labelled_counts(checkpoint).double()
    valid = (labels != IGNORE_INDEX).unsqueeze(1)
    predicted = sum((image.float().exp() * v).sum(dim=(1, 2)) for image, v in zip(log_probs, valid)).double()
    return (labelled / labelled.sum() * predicted / predicted.sum()).sqrt()


ALIGN_TO = {
    "images": lambda checkpoint, log_probs, labels: None,  # argmax_alignment_bias's default
    "labelled": lambda checkpoint, log_probs, labels: labelled_counts(checkpoint),
    "labelled_x_predicted": labelled_x_predicted,
}


def confusions(log_probs: torch.Tensor, labels: torch.Tensor, threshold: float, bias: torch.Tensor):
    """-> confusion over all valid pixels, over the confident ones, of the pseudo labels of
    log_probs + bias (C,)"""
    every, confident = (Confusion(log_probs.shape[1]) for _ in range(2))
    for image_log_probs, image_labels in zip(log_probs, labels):
        probs = (image_log_probs.float() + bias.view(-1, 1, 1)).softmax(0).unsqueeze(0)
        pseudo, confidence = pseudo_labels_from_probs(probs)
        sure = confidence > threshold
        every.update(pseudo, image_labels.unsqueeze(0))
        confident.update(pseudo[sure], image_labels.unsqueeze(0)[sure])
    return every.matrix(), confident.matrix()


def argmax_alignment_bias(
    log_probs: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None, iterations: int = 30
) -> torch.Tensor:
    """(C,) log-offsets under which each class wins its share of the valid pixels in `target` (C,)
    class counts, by default these images' ground truth: the training aligner run to its fixed
    point on these images (every update sees all of them)."""
    valid = labels != IGNORE_INDEX
    if target is None:
        target = torch.bincount(labels[valid], minlength=log_probs.shape[1])
    aligner = ArgmaxAlignment(target, momentum=0, rate=0.5)
    probs = log_probs.float().exp()
    for _ in range(iterations):
        aligner.update(probs, valid)
    return aligner.bias.float()


def per_class(matrix: torch.Tensor) -> dict:
    cm = matrix.double()
    total, gt, pred = cm.sum(), cm.sum(1), cm.sum(0)
    return {"recall": (cm.diag() / gt.clamp(min=1)).tolist(), "precision": (cm.diag() / pred.clamp(min=1)).tolist(),
            "iou": (cm.diag() / (gt + pred - cm.diag()).clamp(min=1)).tolist(),
            "gt_share": (gt / total).tolist(), "pred_share": (pred / total).tolist(),
            "row_shares": (cm / gt.clamp(min=1).unsqueeze(1)).tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="RUN_DIR/checkpoints/cycle_K.pt")
    parser.add_argument("--name", required=True, help="result file name")
    parser.add_argument("--network", choices=("teacher", "student"), default="teacher")
    parser.add_argument("--images", type=int, default=60, help="train images, evenly spread; default %(default)s")
    parser.add_argument("--threshold", type=float, default=0.97, help="confidence threshold; default %(default)s")
    parser.add_argument("--argmax-alignment", action="store_true", help="also the argmax-aligned pseudo labels")
    parser.add_argument("--align-to", choices=tuple(ALIGN_TO), default="images",
                        help="the class shares the argmax alignment aims at; default %(default)s")
    parser.add_argument("--out", type=Path, default=RESULTS / "pseudo_labels", help="default %(default)s")
    args = parser.parse_args(argv)
    meta, log_probs, labels = teacher_outputs(args.checkpoint, args.network, args.images)
    every, confident = confusions(log_probs, labels, args.threshold, torch.zeros(log_probs.shape[1]))
    all_pixels, sure = per_class(every), per_class(confident)
    aligned = {}
    if args.argmax_alignment:
        target = ALIGN_TO[args.align_to](args.checkpoint, log_probs, labels)
        bias = argmax_alignment_bias(log_probs, labels, target)
        aligned_every, _ = confusions(log_probs, labels, args.threshold, bias)
        aligned = {"argmax_aligned": per_class(aligned_every) | {"bias": bias.tolist(), "confusion": aligned_every.tolist()}}
    write_json(args.out / f"{args.name}.json", {
        **vars(args) | {"checkpoint": str(args.checkpoint), "out": str(args.out)}, **meta,
        "pixel_accuracy": float(every.diag().sum() / every.sum()),
        "confident_share": float(confident.sum() / every.sum()),
        "confident_accuracy": float(confident.diag().sum() / confident.sum().clamp(min=1)),
        "all": all_pixels | {"confusion": every.tolist()}, "confident": sure | {"confusion": confident.tolist()},
        **aligned,
        "machine": machine_info(),
    })
    columns = [all_pixels["gt_share"], all_pixels["recall"], all_pixels["precision"], sure["recall"]]
    rows = [[name, *(f"{column[c]:.3f}" for column in columns)] for c, name in enumerate(meta["names"])]
    print(markdown_table(["class", "gt share", "recall", "precision", "recall where confident"], rows))
    for name, result in [("pseudo labels", all_pixels)] + [("argmax-aligned", a) for a in aligned.values()]:
        print(f"{name}: mIoU {100 * sum(result['iou']) / len(result['iou']):.1f}, IoU per class",
              " ".join(f"{100 * x:.0f}" for x in result["iou"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
