"""Users' own data: ROOT/images/*.{png,jpg,jpeg,bmp,tif,tiff,webp}, ROOT/masks/<stem>.png,
ROOT/classes.yaml (or .json).

classes.yaml:
    classes: [{name: road, color: [128, 64, 128]}, ...]   # class id = position in the list
    ignore_value: 255          # raw value of single-channel masks that means void
    colour_masks: null         # true: masks paint class colours; false: they hold class ids; null: RGB(A)
                               # masks paint colours, grey ones hold ids, indexed ones hold ids under
                               # the PASCAL VOC colour map, else paint colours where their palette
                               # gives the indices used distinct class colours, else hold ids
    ignore_color: [0, 0, 0]    # optional: the void colour in colour masks

Splits: ROOT/{split}.txt lists image stems (or file names). Without it, "train" is every image and
"unlabelled" every image without a mask. Images without masks load all-ignore (`has_label` is False); only the
"unlabelled" split and a split built with `allow_unlabelled` may hold them (build_dataset allows them
in the train split only: they are the pool of `active.initial: labelled`; evaluation needs masks).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from s4al.data.base import DatasetError
from s4al.data.classes import IGNORE_INDEX, ClassSet
from s4al.data.io import (
    IMAGE_SUFFIXES,
    FilePairDataset,
    Pair,
    image_mode,
    id_label_table,
    list_files,
    pair_files,
    read_indexed,
    read_label,
    read_rgba,
    remap_label,
    require_nonempty,
    system_file,
)
from s4al.text import first_of

UNLABELLED_SPLIT = "unlabelled"
SPEC_NAMES = ("classes.yaml", "classes.yml", "classes.json")
COLOUR_MODES = ("RGB", "RGBA")

Channel = Annotated[int, Field(ge=0, le=255)]
Colour = tuple[Channel, Channel, Channel]


class ClassEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    color: Colour


class FolderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classes: list[ClassEntry] = Field(min_length=1, max_length=IGNORE_INDEX - 1)
    ignore_value: Channel = IGNORE_INDEX
    colour_masks: bool | None = None
    ignore_color: Colour | None = None

    @model_validator(mode="after")
    def _distinct(self) -> "FolderSpec":
        if self.ignore_value < len(self.classes):
            clash = self.classes[self.ignore_value].name
            raise ValueError(f"ignore_value {self.ignore_value} is also the id of class '{clash}'")
        colours = [c.color for c in self.classes] + ([self.ignore_color] if self.ignore_color else [])
        if len(set(colours)) != len(colours):
            raise ValueError("class colours (and ignore_color) must be distinct to decode colour masks")
        return self


def _grey_value_read_otherwise(spec: FolderSpec) -> str | None:
    """A single-channel mask read with colour_masks unset holds ids: its value v is class v (or void,
    ignore_value). A class coloured grey (v, v, v) whose masks are grey pictures of the class colours
    would silently lose its pixels to that reading. The problem, or None."""
    for k, entry in enumerate(spec.classes):
        v = entry.color[0]
        if entry.color != (v, v, v) or v == k:
            continue
        if v == spec.ignore_value:
            read_as = f"void (ignore_value {v})"
        elif v < len(spec.classes):
            read_as = f"class {v} ('{spec.classes[v].name}')"
        else:
            continue  # no such class id: such a mask is refused as it is read
        return (f"a single-channel mask, read as class ids, but class '{entry.name}' has the grey colour ({v}, {v}, "
                f"{v}) and the value {v} reads as {read_as}; in classes.yaml set colour_masks: true if masks paint "
                "the class colours, or colour_masks: false if they hold class ids")
    return None


def read_spec(root: Path) -> FolderSpec:
    path = next((root / name for name in SPEC_NAMES if (root / name).is_file()), None)
    if path is None:
        raise DatasetError(f"{root}: no class list, expected one of {SPEC_NAMES}")
    try:
        return FolderSpec.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as err:
        raise DatasetError(f"{path}: cannot read class list: {err}") from None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in err.errors())
        raise DatasetError(f"{path}: invalid class list: {problems}") from None


def _rgb_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


class ColourDecoder:
    """Maps each known RGB colour to its class id; any other colour is an error."""

    def __init__(self, colour_to_class: dict[tuple[int, int, int], int]):
        codes = _rgb_codes(np.array(list(colour_to_class), dtype=np.uint8))
        order = np.argsort(codes)
        self.codes = codes[order]
        self.class_ids = np.array(list(colour_to_class.values()), dtype=np.uint8)[order]

    def known(self, rgb: np.ndarray) -> np.ndarray | None:
        """The class ids of `rgb`'s colours, or None if one of them is no known colour."""
        slot, unknown = self._slots(rgb)
        return None if unknown.any() else self.class_ids[slot]

    def _slots(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = _rgb_codes(rgb)
        slot = np.searchsorted(self.codes, codes).clip(max=len(self.codes) - 1)
        return slot, self.codes[slot] != codes

    def read_mask(self, path: Path) -> np.ndarray:
        """The class ids of a mask painted in the class colours; its transparent pixels (how editors
        save what is not painted) void, whatever colour they hide."""
        rgba = read_rgba(path)
        shown = rgba[..., 3] > 0
        labels = np.full(shown.shape, IGNORE_INDEX, np.uint8)
        labels[shown] = self(rgba[..., :3], path, where=shown)[shown]
        return labels

    def __call__(self, rgb: np.ndarray, path: Path, where: np.ndarray | None = None) -> np.ndarray:
        """The class ids of `rgb`'s colours; `where`: the pixels that must have one (the others' ids
        mean nothing)."""
        slot, unknown = self._slots(rgb)
        if where is not None:
            unknown &= where
        if unknown.any():
            row, col = np.argwhere(unknown)[0]
            colour = tuple(int(c) for c in rgb[row, col])
            raise DatasetError(f"{path}: unknown mask colour {colour} at row {row}, column {col}"
                               + self._grey_hint(rgb if where is None else rgb[where]))
        return self.class_ids[slot]

    def _grey_hint(self, rgb: np.ndarray) -> str:
        """Class ids saved as an RGB image: every pixel a grey whose value is a class id or void."""
        pixels = rgb.reshape(-1, 3)
        values = set(np.unique(pixels[:, 0]).tolist())
        grey = bool((pixels == pixels[:, :1]).all()) and values <= {*self.class_ids.tolist(), IGNORE_INDEX}
        if not grey:
            return ""
        return (" (every pixel a grey of a class id's value: a mask of class ids must be saved as a greyscale PNG, "
                "not RGB)")


def voc_colour_map(size: int = 256) -> np.ndarray:
    """(size, 3) uint8: the PASCAL VOC colour map, under which labelme and many other tools save
    class-id masks. Index i's bits go to red, green, blue in turn, from each channel's top bit down."""
    colours = np.zeros((size, 3), np.uint8)
    for index in range(size):
        value = index
        for bit in range(7, -1, -1):
            for channel in range(3):
                colours[index, channel] |= ((value >> channel) & 1) << bit
            value >>= 3
    return colours


# Compared with a mask's palette: the entries of VOC's 21 classes. A palette of fewer (padded with
# black as it is read) is not taken for VOC's: a paint program's few colours could start it by chance
# (CamVid's void, black, then building, (128, 0, 0)).
VOC_PALETTE_START = voc_colour_map(21)


def is_voc_palette(palette: np.ndarray) -> bool:
    """Whether a (256, 3) palette starts with the PASCAL VOC colour map: its indices are class ids,
    whatever colours the classes have (the entries past the first 21 are not compared: a tool may
    write a shorter palette, padded with black as it is read)."""
    return bool(np.array_equal(palette[:len(VOC_PALETTE_START)], VOC_PALETTE_START))


def palette_labels(indices: np.ndarray, palette: np.ndarray, colours: ColourDecoder, void_index: int,
                   source: Path, remedy: str, void_label: int = IGNORE_INDEX) -> np.ndarray | None:
    """An indexed mask read by the colours its palette gives the indices it uses: class ids, and
    `void_label` at `void_index`, whatever its colour (a palette padded with black would otherwise
    turn void into a black class; a mask read by index agrees); None where it is to be read by index:
    the other indices used have no distinct class colours, or its palette is the PASCAL VOC colour
    map (a tool's class ids) and no index used is painted in another class's colour. Where one is,
    the two readings disagree and neither can be told right: DatasetError naming `source`, with `remedy`."""
    used = np.unique(indices)
    used = used[used != void_index]
    if is_voc_palette(palette):
        _refuse_voc_colours_of_other_classes(used, palette, colours, source, remedy)
        return None
    classes = colours.known(palette[used])
    if classes is None or len(np.unique(classes)) < len(used):
        return None
    table = np.full(256, void_label, dtype=np.uint8)
    table[used] = classes
    return table[indices]


def _refuse_voc_colours_of_other_classes(used: np.ndarray, palette: np.ndarray, colours: ColourDecoder,
                                         source: Path, remedy: str) -> None:
    slot, unknown = colours._slots(palette[used])
    by_colour = colours.class_ids[slot]
    clash = [(int(i), int(c)) for i, c, u in zip(used, by_colour, unknown) if not u and c != i]
    if clash:
        index, class_id = clash[0]
        raise DatasetError(f"{source}: an indexed mask under the PASCAL VOC colour map (as labelme saves class ids) "
                           f"that paints index {index} in the colour of class {class_id}: read by index it is class "
                           f"{index}, by colour class {class_id}; {remedy}")


class ImageFolder(FilePairDataset):
    def __init__(
        self, root: Path, split: str, resize: tuple[int, int] | None = None, allow_unlabelled: bool = False
    ):
        self.root = Path(root)
        self.split = split
        self.resize = resize
        spec = read_spec(self.root)
        self.classes = ClassSet(tuple(c.name for c in spec.classes), tuple(c.color for c in spec.classes))
        self.ignore_value = spec.ignore_value
        self.raw_to_class = id_label_table(self.classes.num_classes, spec.ignore_value)
        self.colour_masks = spec.colour_masks
        self.ids_ambiguous = _grey_value_read_otherwise(spec) if spec.colour_masks is None else None
        colour_to_class = {colour: i for i, colour in enumerate(self.classes.colors)}
        if spec.ignore_color:
            colour_to_class[spec.ignore_color] = IGNORE_INDEX
        self.decode_colours = ColourDecoder(colour_to_class)
        self.ignore_color = spec.ignore_color
        self.pairs = self._list_pairs(allow_unlabelled or split == UNLABELLED_SPLIT)

    def mask_reading(self) -> dict:
        # not colour_masks: set otherwise, a mask is read the same way or refused, never read as other classes
        return {"ignore_value": self.ignore_value,
                "ignore_color": None if self.ignore_color is None else list(self.ignore_color)}

    @property
    def mask_dir(self) -> Path:
        return self.root / "masks"

    def _mask_for(self, image: Path) -> Path:
        return self.masks.get(image.stem, self.mask_dir / f"{image.stem}.png")

    def unlisted_images(self) -> list[str]:
        """Where this split is listed in its .txt file, the images no .txt file lists."""
        if not (self.root / f"{self.split}.txt").is_file():
            return []  # this split takes every image another split file does not list
        images = images_by_stem(self.root / "images")
        listed = {stem for split_file in split_files(self.root) for stem in read_stems(split_file, images)}
        return sorted(set(images) - listed)

    def _list_pairs(self, allow_unlabelled: bool) -> list[Pair]:
        images = images_by_stem(self.root / "images")
        self.masks = masks_by_stem(self.mask_dir, images)
        split_file = self.root / f"{self.split}.txt"
        if split_file.is_file():
            stems = read_stems(split_file, images)
            check_disjoint(split_file, stems, images)
            chosen = [images[stem] for stem in stems]
        elif self.split == "train":  # every image that no other split file claims
            claimed = {stem for other in split_files(self.root) for stem in read_stems(other, images)}
            chosen = [image for stem, image in images.items() if stem not in claimed]
        elif self.split == UNLABELLED_SPLIT:
            chosen = [image for image in images.values() if not self._mask_for(image).is_file()]
        else:
            raise DatasetError(f"{split_file}: missing; list the stems of the '{self.split}' images in it, one a line")
        pairs = pair_files(chosen, self._mask_for, allow_unlabelled)
        return require_nonempty(pairs, self.split, split_file if split_file.is_file() else self.root)

    def read_label(self, pair: Pair) -> np.ndarray:
        colour = self.colour_masks
        if colour is None:
            mode = image_mode(pair.label)
            if mode == "P":
                return self._palette_label(pair)
            colour = mode in COLOUR_MODES
        return self.decode_colours.read_mask(pair.label) if colour else self._id_label(pair)

    def _id_label(self, pair: Pair, indices: np.ndarray | None = None) -> np.ndarray:
        if self.ids_ambiguous:
            raise DatasetError(f"{pair.label}: {self.ids_ambiguous}")
        return remap_label(read_label(pair.label) if indices is None else indices, self.raw_to_class, pair.label)

    def _palette_label(self, pair: Pair) -> np.ndarray:
        """An indexed (palette) mask: by index under the PASCAL VOC colour map (refused where that
        paints an index in another class's colour); else by colour where
        the indices it uses have distinct class colours in the palette (an editor's indexed export
        numbers its colours in its own order), else by index (class ids under a palette of other
        colours, or one padded with black). The index ignore_value is void in both readings, and so
        is a pixel the PNG marks transparent (an editor's unpainted background), whatever its index."""
        indices, hidden, palette = read_indexed(pair.label)
        if hidden is not None:
            indices[hidden] = self.ignore_value
        labels = palette_labels(indices, palette, self.decode_colours, self.ignore_value, pair.label,
                                "set colour_masks in classes.yaml: false reads every mask by index, true by colour")
        if labels is None:
            return self._id_label(pair, indices)
        return labels


def images_by_stem(image_dir: Path) -> dict[str, Path]:
    """Every file in images/ must be an image, and no subfolder holds files: one of another kind, or
    in a subfolder, would silently leave the pool."""
    listed = list_files(image_dir, IMAGE_SUFFIXES)
    others = sorted(set(p for p in image_dir.iterdir() if p.is_file() and not system_file(p)) - set(listed))
    if others:
        raise DatasetError(f"{others[0]}: not an image file of a kind this reads ({', '.join(IMAGE_SUFFIXES)}); "
                           "convert it or move it out of images/")
    refuse_subfolders(image_dir)
    refuse_broken_links(image_dir)
    images: dict[str, Path] = {}
    for image in listed:
        if image.stem in images:
            other = images[image.stem]
            raise DatasetError(f"{image}: two images share the stem '{image.stem}' (also {other})")
        images[image.stem] = image
    return images


def refuse_broken_links(folder: Path) -> None:
    """A link in a folder read flat whose target is gone would silently leave the folder."""
    broken = sorted(p for p in folder.iterdir() if p.is_symlink() and not p.exists() and not p.name.startswith("."))
    if broken:
        raise DatasetError(f"{broken[0]}: a link to {os.readlink(broken[0])}, which does not exist; "
                           f"mend the link or remove it from {folder.name}/")


def refuse_subfolders(folder: Path) -> None:
    """A folder read flat must hold no subfolder with files in it: they would silently be left out."""
    nested = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                    and any(f.is_file() for f in p.rglob("*")))
    if nested:
        raise DatasetError(f"{nested[0]}: a folder inside {folder.name}/, which is read without its subfolders: "
                           f"move its files up into {folder.name}/ or the folder out")


def masks_by_stem(mask_dir: Path, images: dict[str, Path]) -> dict[str, Path]:
    """Every file in masks/ must be the PNG mask of an image (.png in any case): one that is not
    would be ignored and its image taken for an unlabelled one."""
    masks: dict[str, Path] = {}
    if not mask_dir.is_dir():
        return masks
    refuse_subfolders(mask_dir)
    refuse_broken_links(mask_dir)
    for mask in sorted(mask_dir.iterdir()):
        if system_file(mask) or not mask.is_file():
            continue
        if mask.suffix.lower() in (".jpg", ".jpeg"):
            raise DatasetError(f"{mask}: a JPEG mask; JPEG compression alters class ids and colours, "
                               f"save it as PNG ({mask.stem}.png)")
        if mask.suffix.lower() != ".png":
            raise DatasetError(f"{mask}: masks must be PNG files named <image stem>.png")
        if mask.stem not in images:
            raise DatasetError(f"{mask}: no image with stem '{mask.stem}' in images/ (a mask without its image)")
        if mask.stem in masks:
            raise DatasetError(f"{mask}: a second mask for image '{mask.stem}' (also {masks[mask.stem]})")
        masks[mask.stem] = mask
    return masks


def split_files(root: Path) -> list[Path]:
    """The dataset's split lists: every .txt file beside images/ but for system files (such as the
    ._train.txt macOS leaves beside a copy)."""
    return sorted(path for path in root.glob("*.txt") if not system_file(path))


def check_disjoint(split_file: Path, stems: list[str], images: dict[str, Path]) -> None:
    """A split file's images must be in no other split file: an image in train.txt and val.txt
    would be trained on and then scored as unseen."""
    listed = set(stems)
    for other in split_files(split_file.parent):
        shared = [stem for stem in read_stems(other, images) if stem in listed] if other != split_file else []
        if shared:
            quoted = [f"'{stem}'" for stem in shared]
            raise DatasetError(f"{split_file}: images {first_of(quoted)} are also in {other}; "
                               "a split's images must be in no other")


def _stem_of(line: str, images: dict[str, Path]) -> str:
    """The stem a split file's line lists: a stem may hold '#', so the longest part of the line
    before a '#' (or the whole line) that names an image, by its stem or its file name; else what
    precedes the first '#'."""
    parts = line.split("#")
    for count in range(len(parts), 0, -1):
        name = "#".join(parts[:count]).strip()
        if name in images:
            return name
        stem = Path(name).stem
        if stem in images and images[stem].name == name:
            return stem
    return parts[0].strip()


def read_stems(split_file: Path, images: dict[str, Path]) -> list[str]:
    """The stems a split file lists, one a line; a byte-order mark (Windows editors) is not a stem's."""
    lines: dict[str, int] = {}
    text = split_file.read_text(encoding="utf-8-sig").splitlines()
    for number, line in enumerate(text, start=1):
        stem = _stem_of(line, images)
        if stem and stem not in images:
            none = not any(_stem_of(other, images) in images for other in text)
            raise DatasetError(f"{split_file}:{number}: no image with stem '{stem}' in images/" + (
                "; no line names one: every .txt file beside images/ is read as a split's list of image "
                "stems or file names, so move other text files away" if none else ""))
        if stem in lines:
            raise DatasetError(f"{split_file}:{number}: '{stem}' is listed again (also line {lines[stem]}); "
                               "an image listed twice would count twice")
        if stem:
            lines[stem] = number
    return list(lines)
