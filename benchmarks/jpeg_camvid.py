"""A CamVid copy with JPEG images (quality 95, no chroma subsampling: about a third of the PNGs'
size), for a machine that can receive only so much. Labels are copied unchanged, and new
train.txt / val.txt lists point at the JPEGs, so the copy works as --data-root. JPEG is lossy:
results on such a copy are named apart (`--name paper_jpeg95`).

    .venv/bin/python benchmarks/jpeg_camvid.py ../shared/data/camvid /tmp/camvid_jpeg95
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

import common  # noqa: F401  (first: this checkout's s4al)
from s4al.data.camvid import CamVid

SPLITS = ("train", "val", "test")  # test where the source has it


def jpeg_copy(source: Path, target: Path, quality: int) -> int:
    """Copies every pair of SPLITS, images re-encoded; returns the number of pairs."""
    count = 0
    for split in SPLITS:
        if split == "test" and not ((source / "test").is_dir() or (source / "test.txt").is_file()):
            continue
        lines = []
        for pair in CamVid(source, split).pairs:
            image, label = (Path(p).relative_to(source) for p in (pair.image, pair.label))
            image = image.with_suffix(".jpg")
            for path in (image, label):
                (target / path).parent.mkdir(parents=True, exist_ok=True)
            Image.open(pair.image).convert("RGB").save(target / image, quality=quality, subsampling=0)
            shutil.copyfile(pair.label, target / label)
            lines.append(f"{image} {label}\n")
        (target / f"{split}.txt").write_text("".join(lines))
        count += len(lines)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="CamVid in the SegNet layout")
    parser.add_argument("target", type=Path, help="the copy (created)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality; default: %(default)s")
    args = parser.parse_args(argv)
    print(f"{jpeg_copy(args.source, args.target, args.quality)} pairs -> {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
