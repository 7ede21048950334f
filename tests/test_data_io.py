import io
import re
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from s4al.data.base import DatasetError
from s4al.data.io import (
    Pair, check_same_size, label_table, read_image, read_indexed, read_label, read_pair_list, read_size, remap_label,
    resize_image, resize_label, turn_keeping_size,
)


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def test_read_image_gives_rgb_for_any_mode(tmp_path):
    grey = save(tmp_path / "grey.png", np.full((5, 7), 9, np.uint8))
    rgba = save(tmp_path / "rgba.png", np.zeros((5, 7, 4), np.uint8))
    for path in (grey, rgba):
        image = read_image(path)
        assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    assert read_size(grey) == (5, 7)


def test_read_label_keeps_palette_indices(tmp_path):
    values = np.arange(12, dtype=np.uint8).reshape(3, 4)
    palette_image = Image.fromarray(values, "P")
    palette_image.putpalette(np.random.default_rng(0).integers(0, 255, 768, dtype=np.uint8).tobytes())
    palette_image.save(path := tmp_path / "p.png")
    assert np.array_equal(read_label(path), values)


def test_colour_label_is_rejected_naming_the_file(tmp_path):
    path = save(tmp_path / "colour_label.png", np.zeros((3, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="colour_label.png.*single-channel"):
        read_label(path)


def test_truncated_and_missing_files_raise_dataset_error(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    broken = tmp_path / "broken.png"
    broken.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DatasetError, match="broken.png"):
        read_image(broken)
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="garbage.png.*unreadable"):
        read_image(tmp_path / "garbage.png")
    with pytest.raises(DatasetError, match="absent.png.*not found"):
        read_image(tmp_path / "absent.png")


def test_an_aerial_scan_of_196_million_pixels_is_read_and_only_a_far_larger_one_is_refused(tmp_path, monkeypatch):
    big = tmp_path / "orthophoto.png"
    Image.new("1", (14_000, 14_000)).save(big)  # over twice Pillow's default limit of 89 million pixels
    assert read_size(big) == (14_000, 14_000)
    # over Pillow's limit, under twice it, Pillow warns; an image s4al takes is no bomb: nothing said of it (in a
    # process of its own: pytest drops the warning filters that modules add as its collection imports them)
    quiet = subprocess.run([sys.executable, "-c", (
        "import warnings; from pathlib import Path; from PIL import Image; "
        "warnings.simplefilter('error', Image.DecompressionBombWarning); from s4al.data.io import read_size; "
        f"Image.MAX_IMAGE_PIXELS = {14_000 * 14_000 * 2 // 3}; print(read_size(Path({str(big)!r})))")],
        capture_output=True, text=True)
    assert (quiet.returncode, quiet.stdout) == (0, "(14000, 14000)\n"), quiet.stderr
    assert "DecompressionBombWarning" not in quiet.stderr
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 14_000 * 14_000 // 3)
    with pytest.raises(DatasetError, match=f"^{big}: too large to read \\(Image size \\(196000000 pixels\\) "
                                           ".*; split it into smaller images$"):
        read_size(big)


def test_a_one_bit_mask_holds_class_ids_0_and_1(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], bool)
    Image.fromarray(bits).save(path := tmp_path / "crack.png")
    assert Image.open(path).mode == "1"
    assert read_label(path).tolist() == [[0, 1, 1], [1, 0, 0]] and read_label(path).dtype == np.uint8


def test_remap_maps_values_and_names_invalid_ones():
    table = label_table({0: 0, 1: 1, 11: 255})
    raw = np.array([[0, 1, 11]], np.uint8)
    assert remap_label(raw, table, "x.png").tolist() == [[0, 1, 255]]
    with pytest.raises(DatasetError, match=r"lab.png: label values \[7, 12\]"):
        remap_label(np.array([[0, 7, 12, 7]], np.uint8), table, "lab.png")


def test_resize_uses_nearest_for_labels():
    label = np.array([[0, 3], [5, 255]], np.uint8)
    assert resize_image(np.zeros((2, 2, 3), np.uint8), (5, 7)).shape == (5, 7, 3)
    resized = resize_label(label, (5, 7))
    assert resized.shape == (5, 7) and set(np.unique(resized)) == {0, 3, 5, 255}
    # each pixel takes the source pixel under its centre, floor((i + 0.5) * in / out) (its top-left corner's,
    # floor(i * in / out), would be 0, 1, 3 and 0, 2, 4: half a pixel off the image's bilinear resize)
    assert resize_label(np.array([[0, 1, 2, 3, 4]], np.uint8), (1, 3)).tolist() == [[0, 2, 4]]
    assert resize_label(np.arange(7, dtype=np.uint8)[None], (1, 3)).tolist() == [[1, 3, 5]]


def test_pair_list_errors_name_the_list_file_and_line(tmp_path):
    save(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "ok.txt").write_text("a.png a.png\n\n")
    assert read_pair_list(tmp_path / "ok.txt", tmp_path) == [Pair(tmp_path / "a.png", tmp_path / "a.png")]
    (tmp_path / "short.txt").write_text("a.png\n")
    with pytest.raises(DatasetError, match="short.txt:1"):
        read_pair_list(tmp_path / "short.txt", tmp_path)
    (tmp_path / "missing.txt").write_text("a.png b.png\n")
    with pytest.raises(DatasetError, match="missing.txt:1: missing pair file .*b.png"):
        read_pair_list(tmp_path / "missing.txt", tmp_path)


def test_16_bit_greyscale_keeps_its_top_8_bits(tmp_path):
    wide = np.array([[0, 255, 256, 32768, 65535], [257, 514, 4095, 65280, 65279]], dtype=np.uint16)
    path = save(tmp_path / "grey16.png", wide)
    assert Image.open(path).mode.startswith("I")  # stored as 16-bit, not 8
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (2, 5, 3)
    expected = np.array([[0, 0, 1, 128, 255], [1, 2, 15, 255, 254]], dtype=np.uint8)
    for channel in range(3):
        assert np.array_equal(image[..., channel], expected)


def test_a_16_bit_image_is_read_in_little_more_memory_than_its_pixels_and_the_rgb_result(tmp_path):
    path = save(tmp_path / "scan.png", np.arange(1000 * 1000, dtype=np.uint32).reshape(1000, 1000).astype(np.uint16))
    if Image.open(path).mode == "I":
        pytest.skip("this Pillow opens 16-bit PNGs as 32-bit: 4 bytes a pixel before any conversion")
    tracemalloc.start()
    try:
        read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1000 * 1000  # bytes: 2 of its pixels, 1 of the top bits, 3 of RGB, and a copy of 2 at most



def test_a_floating_point_image_is_refused_not_read_black(tmp_path):
    Image.fromarray(np.full((4, 6), 0.5, np.float32)).save(path := tmp_path / "reflectance.tif")
    with pytest.raises(DatasetError, match=f"^{path}: a floating-point image; save it with 8- or 16-bit integer"):
        read_image(path)


def save_with_orientation(path, array, orientation):
    exif = Image.Exif()
    exif[274] = orientation  # the EXIF Orientation tag
    Image.fromarray(array).save(path, exif=exif)
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".webp"])  # Pillow turns a TIFF's size itself
def test_exif_orientation_turns_image_as_viewers_show_it(tmp_path, suffix):
    # stored 2x3; orientation 6 is shown turned a quarter clockwise (3x2), 3 turned half (2x3)
    stored = np.zeros((2, 3, 3), np.uint8)
    stored[0, 0] = 255  # one white pixel, top left as stored
    quarter = save_with_orientation(tmp_path / f"six{suffix}", stored, 6)
    half = save_with_orientation(tmp_path / f"three{suffix}", stored, 3)
    assert read_size(quarter) == (3, 2) and read_size(half) == (2, 3)
    # clockwise quarter: the stored top-left corner is shown top right; a half turn puts it bottom right
    assert read_image(quarter).shape == (3, 2, 3) and read_image(quarter)[0, 1].min() > 200
    assert read_image(half)[1, 2].min() > 200 and read_image(half)[0, 0].max() < 50


def test_exif_orientation_applies_to_labels(tmp_path):
    stored = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    path = save_with_orientation(tmp_path / "label.png", stored, 6)
    assert np.array_equal(read_label(path), [[4, 1], [5, 2], [6, 3]])
    assert read_size(path) == (3, 2)


def test_an_indexed_masks_values_transparency_and_palette_are_read_as_one_picture(tmp_path):
    """EXIF in a PNG comes before its pixels (Pillow's own) or after them, seen only once they are
    decoded: read_label and the image itself take the orientation read before decoding, and so do the
    mask's values and its transparency, which line up whichever way."""
    stored = np.array([[0, 1, 2], [1, 2, 0]], np.uint8)  # index 0 transparent
    indexed = Image.fromarray(stored, "P")
    indexed.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    exif = Image.Exif()
    exif[274] = 6  # a quarter turn
    indexed.save(tmp_path / "before.png", transparency=0, exif=exif)
    indexed.save(buffer := io.BytesIO(), "PNG", transparency=0)
    png, body = buffer.getvalue(), exif.tobytes().removeprefix(b"Exif\x00\x00")
    end = png.rindex(b"IEND") - 4  # the eXIf chunk just before IEND, after the pixels
    chunk = len(body).to_bytes(4, "big") + b"eXIf" + body + zlib.crc32(b"eXIf" + body).to_bytes(4, "big")
    (tmp_path / "after.png").write_bytes(png[:end] + chunk + png[end:])
    for name, shown in (("before", np.rot90(stored, -1)), ("after", stored)):
        values, hidden, palette = read_indexed(tmp_path / f"{name}.png")
        assert np.array_equal(values, shown) and np.array_equal(values, read_label(tmp_path / f"{name}.png"))
        assert np.array_equal(hidden, shown == 0) and palette[:3].tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def test_a_mask_of_the_stored_pixels_of_a_turned_photo_is_refused_saying_the_image_is_turned(tmp_path):
    photo = save_with_orientation(tmp_path / "photo.jpg", np.zeros((2, 3, 3), np.uint8), 6)  # shown 3x2
    mask = save(tmp_path / "photo.png", np.zeros((2, 3), np.uint8))  # painted on the pixels as stored
    with pytest.raises(DatasetError, match=re.escape(
            f"{mask}: label size (2, 3) (H, W) differs from image {photo} size (3, 2) (the image as shown, turned "
            "by its EXIF orientation 6: a mask must match the picture viewers show)")):
        check_same_size(read_size(photo), read_label(mask), Pair(photo, mask))


@pytest.mark.parametrize("shape, orientation, said", [
    ((2, 3, 3), 3, 3), ((2, 3, 3), 2, 2), ((3, 3, 3), 6, 6),  # a half turn, a mirror; a quarter turn of a square
    ((2, 3, 3), 6, None), ((2, 3, 3), 1, None),  # a quarter turn of an oblong changes its size; none turns nothing
])
def test_an_orientation_that_turns_a_picture_without_changing_its_size_is_found(tmp_path, shape, orientation, said):
    photo = save_with_orientation(tmp_path / "photo.jpg", np.zeros(shape, np.uint8), orientation)
    assert turn_keeping_size(photo) == said


def test_read_size_reads_the_file_header_alone(tmp_path, monkeypatch):
    from PIL import ImageFile

    png = save(tmp_path / "a.png", np.zeros((5, 7, 3), np.uint8))
    jpg = save(tmp_path / "a.jpg", np.zeros((5, 7, 3), np.uint8))
    turned = save_with_orientation(tmp_path / "b.jpg", np.zeros((5, 7, 3), np.uint8), 6)
    decoded, load = [], ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image.format) or load(image))
    assert [read_size(path) for path in (png, jpg, turned)] == [(5, 7), (5, 7), (7, 5)]
    assert decoded == []
