"""A built-in synthetic street-scene dataset, generated from a seed (the demo's and the tests' data).

Each image is drawn from its own random stream (seed, split, index): a sky gradient, a skyline of
textured buildings, a road in perspective with lane marks, sidewalks, and objects painted far to
near: trees, cars and the rare tail classes (thin poles, small signs, small pedestrians). Colours
vary per image and overlap between classes, and illumination and noise vary, so a per-pixel colour
lookup cannot solve it. About 1% of the label pixels are void (random speckle).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from s4al.data.base import DatasetError, Sample, SegmentationDataset
from s4al.data.classes import IGNORE_INDEX, ClassSet

SYNTHETIC_CLASSES = ClassSet(
    names=("sky", "building", "road", "sidewalk", "tree", "car", "pole", "sign", "pedestrian"),
    colors=(
        (128, 128, 128), (128, 0, 0), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (64, 0, 128), (192, 192, 128), (192, 128, 128), (64, 64, 0),
    ),
)
SKY, BUILDING, ROAD, SIDEWALK, TREE, CAR, POLE, SIGN, PEDESTRIAN = range(SYNTHETIC_CLASSES.num_classes)
VOID_SHARE = 0.01
# How strongly the shared noise texture modulates each class (trees are leafy, sky is smooth).
TEXTURE_STRENGTH = np.array([0.03, 0.10, 0.12, 0.10, 0.45, 0.06, 0.05, 0.05, 0.15], dtype=np.float32)
BUILDING_COLOURS = np.array([[120, 120, 125], [185, 165, 130], [150, 75, 55], [75, 75, 85], [200, 195, 185]])
CAR_COLOURS = np.array(
    [[220, 220, 225], [35, 35, 40], [130, 130, 135], [170, 30, 30], [40, 60, 150], [175, 180, 185]]
)
SIGN_COLOURS = np.array([[200, 30, 30], [30, 70, 190], [230, 200, 30], [235, 235, 235]])


@dataclass
class Canvas:
    label: np.ndarray  # (H, W) uint8
    image: np.ndarray  # (H, W, 3) float32, 0..255 before lighting and noise

    def paint(
        self, top: float, bottom: float, left: float, right: float, cls: int, colour: np.ndarray, shape=None
    ) -> None:
        """Paint the box [top, bottom) x [left, right); `shape(dy, dx)` in box-relative -1..1 coordinates
        selects the covered pixels (None: the whole box)."""
        height, width = self.label.shape
        y0, y1 = max(int(top), 0), min(int(np.ceil(bottom)), height)
        x0, x1 = max(int(left), 0), min(int(np.ceil(right)), width)
        if y0 >= y1 or x0 >= x1:
            return
        inside = np.ones((y1 - y0, x1 - x0), dtype=bool)
        if shape is not None:
            dy = (np.arange(y0, y1)[:, None] + 0.5 - (top + bottom) / 2) / ((bottom - top) / 2)
            dx = (np.arange(x0, x1)[None, :] + 0.5 - (left + right) / 2) / ((right - left) / 2)
            inside = shape(dy, dx)
        self.label[y0:y1, x0:x1][inside] = cls
        self.image[y0:y1, x0:x1][inside] = colour


def ellipse(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    return dy**2 + dx**2 <= 1


def leafy(phase: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """An ellipse with a wavy outline, for tree crowns."""

    def shape(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        wobble = 1 + 0.18 * np.sin(6 * np.arctan2(dy, dx) + phase)
        return dy**2 + dx**2 <= wobble**2

    return shape


@dataclass
class Street:
    """Perspective geometry: the road narrows to `vanish_x` on the horizon row."""

    height: int
    width: int
    horizon: float
    vanish_x: float
    drift: float  # how far the road centre moves between horizon and bottom row, in pixels
    road_spread: float
    walk_spread: float

    def depth(self, y):
        """0 on the horizon, 1 on the bottom row (nearest to the camera)."""
        return np.clip((y - self.horizon) / (self.height - self.horizon), 0, 1)

    def centre(self, y):
        return self.vanish_x + self.depth(y) * self.drift

    def road_half_width(self, y):
        return self.width * (0.015 + self.depth(y) * self.road_spread)

    def walk_width(self, y):
        return self.width * (0.005 + self.depth(y) * self.walk_spread)

    def kerb_offset(self, y, side: int, outward: float):
        """x of a point `outward` (0: kerb, 1: outer sidewalk edge) across the sidewalk on `side` (-1/+1)."""
        return self.centre(y) + side * (self.road_half_width(y) + outward * self.walk_width(y))


def random_street(rng: np.random.Generator, height: int, width: int) -> Street:
    return Street(
        height=height,
        width=width,
        horizon=height * rng.uniform(0.4, 0.5),
        vanish_x=width * rng.uniform(0.35, 0.65),
        drift=width * rng.uniform(-0.15, 0.15),
        road_spread=rng.uniform(0.4, 0.6),
        walk_spread=rng.uniform(0.1, 0.2),
    )


def jitter(rng: np.random.Generator, colour, amount: float = 18.0) -> np.ndarray:
    return np.clip(np.asarray(colour, dtype=np.float32) + rng.normal(0, amount, 3), 0, 255)


def skyline(rng: np.random.Generator, street: Street) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the building top row and the building colour; a gap leaves sky to the horizon."""
    width = street.width
    widths = rng.integers(max(width // 12, 2), max(width // 4, 3), size=width)
    count = int(np.searchsorted(np.cumsum(widths), width)) + 1
    widths = widths[:count]
    tops = street.horizon * rng.uniform(0.05, 0.7, count)
    tops[rng.random(count) < 0.12] = street.horizon
    styles = rng.integers(len(BUILDING_COLOURS), size=count)
    colours = np.stack([jitter(rng, BUILDING_COLOURS[style]) for style in styles])
    return np.repeat(tops, widths)[:width], np.repeat(colours, widths, axis=0)[:width]


def windows(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, street: Street) -> np.ndarray:
    scale = street.height / 96
    period_x, period_y = rng.uniform(5, 9) * scale, rng.uniform(6, 10) * scale
    fill_x, fill_y = rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.6)
    offset_x, offset_y = rng.uniform(0, period_x), rng.uniform(0, period_y)
    columns = ((xs + offset_x) % period_x) < fill_x * period_x
    rows = ((ys + offset_y) % period_y) < fill_y * period_y
    return columns & rows


def sky_colours(rng: np.random.Generator, street: Street, ys: np.ndarray) -> np.ndarray:
    """(H, 1, 3) vertical gradient: blue to pale for a clear sky, grey for an overcast one."""
    if rng.random() < 0.35:
        top = jitter(rng, [rng.uniform(150, 205)] * 3, 8)
        bottom = jitter(rng, top + 15, 8)
    else:
        top = jitter(rng, [95, 140, 205], 15)
        bottom = jitter(rng, [185, 205, 225], 15)
    fraction = np.clip(ys / street.horizon, 0, 1)[..., None]
    return top + (bottom - top) * fraction


def paint_background(rng: np.random.Generator, street: Street) -> Canvas:
    height, width = street.height, street.width
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    from_centre = np.abs(xs - street.centre(ys))
    half = street.road_half_width(ys)
    ground = ys >= street.horizon
    road = ground & (from_centre < half)
    walk = ground & ~road & (from_centre < half + street.walk_width(ys))
    tops, facade = skyline(rng, street)
    building = (ys >= tops[None, :]) & ~road & ~walk
    label = np.select([road, walk, building], [ROAD, SIDEWALK, BUILDING], SKY).astype(np.uint8)

    # Lane marks and paving joints are spaced evenly on the ground plane, i.e. in 1 / (y - horizon).
    ground_phase = height / (ys - street.horizon + 2)
    lane = (from_centre < 0.012 * width * street.depth(ys) + 0.4) & ((ground_phase * 1.5) % 1 < 0.5)
    joints = ((ground_phase * 4) % 1) < 0.15
    road_colour, walk_colour = jitter(rng, [rng.uniform(60, 115)] * 3, 8), jitter(rng, [150, 145, 135], 25)
    facade = facade[None] * np.where(windows(rng, ys, xs, street) & (ys > tops + 2), 0.55, 1.0)[..., None]
    image = np.select(
        [road[..., None], walk[..., None], building[..., None]],
        [np.where(lane[..., None], jitter(rng, [225, 225, 210]), road_colour),
         np.where(joints[..., None], walk_colour * 0.75, walk_colour),
         facade],
        sky_colours(rng, street, ys),
    ).astype(np.float32)
    return Canvas(label, image)


def random_side(rng: np.random.Generator) -> int:
    return 1 if rng.random() < 0.5 else -1


def tree(rng: np.random.Generator, street: Street, canvas: Canvas, base: float) -> None:
    scale = street.height * (0.35 + street.depth(base))
    x = street.kerb_offset(base, random_side(rng), rng.uniform(0.6, 1.6))
    trunk_height, crown = scale * rng.uniform(0.12, 0.2), scale * rng.uniform(0.1, 0.17)
    trunk_half = max(scale * 0.012, 0.5)
    canvas.paint(base - trunk_height, base, x - trunk_half, x + trunk_half, TREE, jitter(rng, [90, 65, 45]))
    green = [55, 110, 40] if rng.random() < 0.8 else [150, 120, 50]  # some autumn crowns
    crown_y = base - trunk_height - crown * 0.6
    canvas.paint(crown_y - crown, crown_y + crown, x - crown * 1.1, x + crown * 1.1, TREE,
                 jitter(rng, green, 20), leafy(rng.uniform(0, 2 * np.pi)))


def car(rng: np.random.Generator, street: Street, canvas: Canvas, base: float) -> None:
    half_road = street.road_half_width(base)
    length = half_road * rng.uniform(0.45, 0.7)
    height = length * rng.uniform(0.5, 0.7)
    x = street.centre(base) + rng.uniform(-0.6, 0.6) * half_road
    left, right = x - length / 2, x + length / 2
    body = jitter(rng, CAR_COLOURS[rng.integers(len(CAR_COLOURS))], 12)
    canvas.paint(base - height * 0.6, base - height * 0.1, left, right, CAR, body)
    canvas.paint(base - height, base - height * 0.55, left + length * 0.18, right - length * 0.18, CAR,
                 body * 0.35 + 25)  # tinted glass
    for wheel_left in (left + length * 0.08, right - length * 0.3):
        wheel_right = wheel_left + length * 0.22
        canvas.paint(base - height * 0.2, base, wheel_left, wheel_right, CAR, jitter(rng, [30] * 3, 5))


def pole(rng: np.random.Generator, street: Street, canvas: Canvas, base: float) -> None:
    x = street.kerb_offset(base, random_side(rng), rng.uniform(0.1, 0.5))
    thickness = int(np.clip(round(street.width / 160 * rng.uniform(0.7, 1.3)), 1, 3))
    top = base - street.height * (0.2 + 0.25 * street.depth(base)) * rng.uniform(0.8, 1.2)
    canvas.paint(top, base, x, x + thickness, POLE, jitter(rng, [rng.uniform(80, 160)] * 3, 10))
    if rng.random() < 0.7:
        size = max(street.height * 0.055 * (0.5 + street.depth(base)), 3)
        shape = ellipse if rng.random() < 0.5 else None
        middle = x + thickness / 2
        colour = jitter(rng, SIGN_COLOURS[rng.integers(len(SIGN_COLOURS))], 15)
        box = (top - size * 0.3, top + size * 0.7, middle - size / 2, middle + size / 2)
        canvas.paint(*box, SIGN, colour, shape)


def pedestrian(rng: np.random.Generator, street: Street, canvas: Canvas, base: float) -> None:
    height = street.height * (0.06 + 0.2 * street.depth(base)) * rng.uniform(0.85, 1.15)
    half = max(height * 0.15, 0.75)
    x = street.kerb_offset(base, random_side(rng), rng.uniform(0.2, 0.8))
    shirt, trousers = jitter(rng, [rng.uniform(20, 200)] * 3, 40), jitter(rng, [50, 50, 70], 20)
    canvas.paint(base - height * 0.45, base, x - half * 0.7, x + half * 0.7, PEDESTRIAN, trousers)
    canvas.paint(base - height * 0.82, base - height * 0.4, x - half, x + half, PEDESTRIAN, shirt, ellipse)
    canvas.paint(base - height, base - height * 0.8, x - half * 0.6, x + half * 0.6, PEDESTRIAN,
                 jitter(rng, [200, 160, 130], 25), ellipse)


# (painter, most instances per image)
OBJECT_COUNTS = ((tree, 4), (car, 3), (pole, 3), (pedestrian, 3))


def paint_objects(rng: np.random.Generator, street: Street, canvas: Canvas) -> None:
    """Draw far objects first so that nearer ones occlude them."""
    draws = []
    for painter, most in OBJECT_COUNTS:
        count = rng.integers(0, most, endpoint=True)
        bases = street.horizon + (street.height - street.horizon) * rng.uniform(0.1, 1.0, count)
        draws += [(base, painter) for base in bases]
    for base, painter in sorted(draws, key=lambda draw: draw[0]):
        painter(rng, street, canvas, base)


def finish(rng: np.random.Generator, canvas: Canvas) -> Sample:
    """Class textures, global lighting, sensor noise and void speckle."""
    height, width = canvas.label.shape
    coarse = rng.standard_normal(((height + 3) // 4, (width + 3) // 4)).astype(np.float32)
    texture = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:height, :width]
    shade = 1 + TEXTURE_STRENGTH[canvas.label] * texture
    lighting = rng.uniform(0.6, 1.3) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * rng.uniform(3, 10)
    image = canvas.image * shade[..., None] * lighting + noise
    label = canvas.label
    void = rng.integers(0, label.size, size=int(VOID_SHARE * label.size))
    label.reshape(-1)[void] = IGNORE_INDEX
    return Sample(np.clip(image, 0, 255).astype(np.uint8), label)


def generate_street(rng: np.random.Generator, height: int, width: int) -> Sample:
    street = random_street(rng, height, width)
    canvas = paint_background(rng, street)
    paint_objects(rng, street, canvas)
    return finish(rng, canvas)


class SyntheticStreets(SegmentationDataset):
    """`num_images` synthetic street scenes; image i depends only on (seed, split, i)."""

    classes = SYNTHETIC_CLASSES

    def __init__(self, split: str, num_images: int, height: int, width: int, seed: int = 0):
        if num_images < 1 or height < 16 or width < 16 or seed < 0:
            raise DatasetError(
                f"synthetic split '{split}': need num_images >= 1, height and width >= 16 and seed >= 0, "
                f"got {num_images}, {height}x{width}, seed {seed}"
            )
        self.split = split
        self.num_images = num_images
        self.height = height
        self.width = width
        self.seed = seed

    def __len__(self) -> int:
        return self.num_images

    def _check(self, index: int) -> None:
        if not 0 <= index < self.num_images:
            raise IndexError(f"synthetic split '{self.split}' has {self.num_images} images, no index {index}")

    def image_id(self, index: int) -> str:
        self._check(index)
        return f"{self.split}_{index:05d}"

    def image_size(self, index: int) -> tuple[int, int]:
        self._check(index)
        return self.height, self.width

    def image_problems(self, indices: Iterable[int]) -> list[str]:
        return []  # generated, not read

    def load(self, index: int) -> Sample:
        self._check(index)
        # crc32, not hash(): str hashes change between interpreter runs.
        rng = np.random.default_rng([self.seed, zlib.crc32(self.split.encode()), index])
        return generate_street(rng, self.height, self.width)
