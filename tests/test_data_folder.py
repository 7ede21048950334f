import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from s4al.config import DatasetConfig
from s4al.data import build_dataset
from s4al.data import io as data_io
from s4al.data.base import DatasetError
from s4al.data.folder import ImageFolder

CLASSES = [{"name": "road", "color": [128, 64, 128]}, {"name": "car", "color": [0, 0, 142]},
           {"name": "sky", "color": [70, 130, 180]}]
ID_MASK = np.array([[0, 1], [2, 255]], np.uint8)


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_folder(root, stems=("a", "b"), spec=None, mask=ID_MASK):
    (root / "classes.yaml").write_text(yaml.safe_dump(spec or {"classes": CLASSES}))
    for stem in stems:
        save(root / "images" / f"{stem}.png", np.zeros((2, 2, 3), np.uint8))
        save(root / "masks" / f"{stem}.png", mask)
    return root


def colour_mask(ids, colours):
    return np.array([[colours[i] for i in row] for row in ids], np.uint8)


def test_id_masks_and_default_train_split(tmp_path):
    dataset = ImageFolder(make_folder(tmp_path), "train")
    assert dataset.classes.names == ("road", "car", "sky")
    assert [dataset.image_id(i) for i in range(len(dataset))] == ["a", "b"]
    assert np.array_equal(dataset[0].label, ID_MASK)
    with pytest.raises(DatasetError, match=f"^{tmp_path / 'val.txt'}: missing; list the stems of the 'val' images"):
        ImageFolder(tmp_path, "val")


def test_an_image_in_two_split_files_is_refused_naming_both(tmp_path):
    root = make_folder(tmp_path)
    (root / "val.txt").write_text("b\n")
    (root / "train.txt").write_text("a\nb\n")  # b would be trained on and scored as unseen
    for split, other in (("train", "val"), ("val", "train")):
        with pytest.raises(DatasetError, match=f"^{root / (split + '.txt')}: images 'b' are also in {root / (other + '.txt')}"):
            ImageFolder(root, split)
    (root / "train.txt").write_text("a\n")
    assert [ImageFolder(root, split).image_id(0) for split in ("train", "val")] == ["a", "b"]


def test_a_missing_dataset_folder_is_named_with_where_a_relative_path_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=f"^my_data: no such dataset folder \\(a relative path is read from the "
                                           f"current folder, {tmp_path}\\)"):
        build_dataset(DatasetConfig(name="folder", root="my_data"), "train")


def test_ignore_value_and_json_class_list(tmp_path):
    make_folder(tmp_path, mask=np.array([[0, 9], [2, 1]], np.uint8))
    (tmp_path / "classes.yaml").unlink()
    (tmp_path / "classes.json").write_text(json.dumps({"classes": CLASSES, "ignore_value": 9}))
    assert ImageFolder(tmp_path, "train")[0].label.tolist() == [[0, 255], [2, 1]]
    save(tmp_path / "masks" / "b.png", np.array([[0, 255], [3, 1]], np.uint8))
    with pytest.raises(DatasetError, match=r"masks/b.png: label values \[3, 255\]"):
        ImageFolder(tmp_path, "train")[1]


def test_colour_masks_are_decoded_and_unknown_colours_named(tmp_path):
    colours = [c["color"] for c in CLASSES] + [[0, 0, 0]]
    spec = {"classes": CLASSES, "ignore_color": [0, 0, 0]}
    make_folder(tmp_path, spec=spec, mask=colour_mask([[0, 1], [2, 3]], colours))
    assert ImageFolder(tmp_path, "train")[0].label.tolist() == [[0, 1], [2, 255]]
    save(tmp_path / "masks" / "b.png", colour_mask([[0, 0], [0, 0]], [[1, 2, 3]]))
    with pytest.raises(DatasetError, match=r"masks/b.png: unknown mask colour \(1, 2, 3\) at row 0, column 0$"):
        ImageFolder(tmp_path, "train")[1]


@pytest.mark.parametrize("greys, hinted", [((2, 0, 1, 255), True), ((255,) * 4, True), ((3, 0, 1, 2), False),
                                           ((70,) * 4, False)])
def test_class_ids_saved_as_an_rgb_mask_are_refused_with_a_hint(tmp_path, greys, hinted):
    mask = np.repeat(np.array(greys, np.uint8).reshape(2, 2, 1), 3, axis=2)  # 3 classes: ids 0-2, 255 void
    make_folder(tmp_path, mask=mask)
    grey = greys[0]
    with pytest.raises(DatasetError, match=re.escape(f"unknown mask colour ({grey}, {grey}, {grey}) at row 0, column "
                                                     "0") + ("" if hinted else "$")) as refused:
        ImageFolder(tmp_path, "train")[0]
    assert ("must be saved as a greyscale PNG, not RGB" in str(refused.value)) == hinted


def test_a_colour_mask_with_a_black_background_no_class_has_gets_no_grey_hint(tmp_path):
    mask = colour_mask([[0, 1], [2, 3]], [c["color"] for c in CLASSES] + [[0, 0, 0]])  # black: no class, no void
    make_folder(tmp_path, mask=mask)
    with pytest.raises(DatasetError, match=r"unknown mask colour \(0, 0, 0\) at row 1, column 1$"):
        ImageFolder(tmp_path, "train")[0]


def test_a_colour_masks_transparent_pixels_are_void_whatever_colour_they_hide(tmp_path):
    classes = [{"name": "background", "color": [0, 0, 0]}, *CLASSES]  # black a class, as in VOC's list
    rgba = np.zeros((2, 2, 4), np.uint8)  # transparent black, as editors save the unpainted
    rgba[0, 0] = [0, 0, 142, 255]  # car
    rgba[1, 1] = [0, 0, 0, 255]  # background, painted
    make_folder(tmp_path, spec={"classes": classes}, mask=rgba)
    assert ImageFolder(tmp_path, "train")[0].label.tolist() == [[2, 255], [255, 0]]


def indexed_mask(path, indices, palette):
    """A palette ("P") PNG: `indices` into `palette`, a list of RGB colours."""
    image = Image.fromarray(np.array(indices, np.uint8), mode="P")
    image.putpalette([channel for colour in palette for channel in colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_an_indexed_mask_whose_palette_holds_the_class_colours_is_read_by_colour_else_by_index(tmp_path):
    root = make_folder(tmp_path)
    road, car, sky = (c["color"] for c in CLASSES)
    # an editor's indexed export: its palette numbers the colours as it met them, not as classes.yaml
    indexed_mask(root / "masks" / "a.png", [[0, 1], [2, 2]], [sky, road, car])
    assert ImageFolder(root, "train")[0].label.tolist() == [[2, 0], [1, 1]]
    # the same export with void pixels at index 255 (white, no class's colour): by colour as well
    indexed_mask(root / "masks" / "a.png", [[0, 1], [2, 255]], [sky, road, car] + [[0, 0, 0]] * 252 + [[255] * 3])
    assert ImageFolder(root, "train")[0].label.tolist() == [[2, 0], [1, 255]]
    # indices that are class ids, under a palette of other colours (a grey ramp): read by index
    indexed_mask(root / "masks" / "b.png", [[0, 1], [2, 255]], [[k, k, k] for k in range(256)])
    assert ImageFolder(root, "train")[1].label.tolist() == [[0, 1], [2, 255]]
    # one index of another colour (VOC's border 255 in (224, 224, 192)): the whole mask is read by index
    palette = [road, car, sky] + [[0, 0, 0]] * 252 + [[224, 224, 192]]
    indexed_mask(root / "masks" / "b.png", [[1, 2], [0, 255]], palette)
    assert ImageFolder(root, "train")[1].label.tolist() == [[1, 2], [0, 255]]


def test_an_indexed_masks_transparent_pixels_are_void_and_the_rest_read_by_its_colours(tmp_path):
    root = make_folder(tmp_path)
    road, car, _ = (c["color"] for c in CLASSES)
    # an editor's indexed export on a transparent background: index 0, black, marked transparent
    indexed_mask(root / "masks" / "a.png", [[0, 1], [2, 0]], [[0, 0, 0], road, car])
    with Image.open(root / "masks" / "a.png") as image:
        image.save(root / "masks" / "a.png", transparency=0)
    assert ImageFolder(root, "train")[0].label.tolist() == [[255, 0], [1, 255]]
    # class ids under a grey ramp, index 2 marked transparent: read by index, the hidden pixel void
    indexed_mask(root / "masks" / "b.png", [[0, 1], [2, 1]], [[k, k, k] for k in range(256)])
    with Image.open(root / "masks" / "b.png") as image:
        image.save(root / "masks" / "b.png", transparency=2)
    assert ImageFolder(root, "train")[1].label.tolist() == [[0, 1], [255, 1]]


def test_an_indexed_mask_of_class_ids_whose_palette_is_padded_with_black_is_read_by_index(tmp_path):
    classes = [{"name": "background", "color": [0, 0, 0]}, *CLASSES[:2]]
    colours = [c["color"] for c in classes]
    root = make_folder(tmp_path, spec={"classes": classes})
    # a script's class colours, then black: void 255 is black, as background (class 0) is
    indexed_mask(root / "masks" / "a.png", [[1, 2], [0, 255]], colours + [[0, 0, 0]] * 253)
    assert ImageFolder(root, "train")[0].label.tolist() == [[1, 2], [0, 255]]
    # one class and void: the class's colour is distinct, and void stays void though its index is black
    indexed_mask(root / "masks" / "a.png", [[2, 2], [255, 255]], colours + [[0, 0, 0]] * 253)
    assert ImageFolder(root, "train")[0].label.tolist() == [[2, 2], [255, 255]]


# The PASCAL VOC colour map's first 21 entries and its 255 (void), as labelme and VOC's own masks hold them.
VOC_COLOURS = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128],
               [128, 128, 128], [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0], [64, 0, 128], [192, 0, 128],
               [64, 128, 128], [192, 128, 128], [0, 64, 0], [128, 64, 0], [0, 192, 0], [128, 192, 0], [0, 64, 128]]
VOC_VOID = [224, 224, 192]


@pytest.mark.parametrize("palette", [VOC_COLOURS + [[0, 0, 0]] * 234 + [VOC_VOID], VOC_COLOURS],
                         ids=["with void", "21 entries"])
def test_an_indexed_mask_under_the_voc_colour_map_is_read_by_index_unless_it_paints_another_class_colour(
        tmp_path, palette):
    """CamVid's colours: VOC's index 1 is building's colour (class 1 too), 2 is no class's colour, and 3,
    (128, 128, 0), is tree's, class 4. A mask using 1 and 2 reads by index; one using 3 is class 3 by
    index and tree by colour: refused, naming the file and the setting that decides."""
    classes = [{"name": "sky", "color": [128, 128, 128]}, {"name": "building", "color": [128, 0, 0]},
               {"name": "road", "color": [128, 64, 128]}, {"name": "sidewalk", "color": [0, 0, 192]},
               {"name": "tree", "color": [128, 128, 0]}]
    root = make_folder(tmp_path, spec={"classes": classes})
    indexed_mask(root / "masks" / "a.png", [[1, 2], [2, 255]], palette)
    indexed_mask(root / "masks" / "b.png", [[1, 3], [3, 255]], palette)
    assert ImageFolder(root, "train")[0].label.tolist() == [[1, 2], [2, 255]]
    with pytest.raises(DatasetError, match=r"b\.png: an indexed mask under the PASCAL VOC colour map .* paints index 3 "
                                           r"in the colour of class 4: read by index it is class 3, by colour class 4; "
                                           r"set colour_masks in classes.yaml"):
        ImageFolder(root, "train")[1]
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": classes, "colour_masks": False}))
    assert ImageFolder(root, "train")[1].label.tolist() == [[1, 3], [3, 255]]


@pytest.mark.parametrize("colour, read_as", [((255, 255, 255), "void (ignore_value 255)"),
                                             ((0, 0, 0), "class 0 ('background')")])
def test_a_grey_mask_is_refused_where_a_class_coloured_grey_as_another_value_makes_it_ambiguous(
        tmp_path, colour, read_as):
    spec = {"classes": [{"name": "background", "color": [9, 9, 9] if colour == (0, 0, 0) else [0, 0, 0]},
                        {"name": "crack", "color": list(colour)}]}
    make_folder(tmp_path, spec=spec, mask=np.array([[0, 255], [255, 0]], np.uint8))
    dataset = ImageFolder(tmp_path, "train")
    problem = (f"masks/a.png: a single-channel mask, read as class ids, but class 'crack' has the grey colour "
               f"{colour} and the value {colour[0]} reads as {read_as}; in classes.yaml set colour_masks: true")
    with pytest.raises(DatasetError, match=re.escape(problem)):
        dataset[0]
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump({**spec, "colour_masks": True}))
    if colour == (255, 255, 255):  # a black and white mask paints background and crack
        assert ImageFolder(tmp_path, "train")[0].label.tolist() == [[0, 1], [1, 0]]


def test_colour_masks_with_a_class_coloured_white_read_as_before(tmp_path):
    impervious, car = (255, 255, 255), (255, 255, 0)  # ISPRS Potsdam's colours: class 0 is white
    spec = {"classes": [{"name": "impervious", "color": list(impervious)}, {"name": "car", "color": list(car)}]}
    make_folder(tmp_path, spec=spec, mask=colour_mask([[0, 1], [1, 0]], [impervious, car]))
    assert ImageFolder(tmp_path, "train")[0].label.tolist() == [[0, 1], [1, 0]]


def test_colour_masks_false_rejects_rgb_masks(tmp_path):
    colours = [c["color"] for c in CLASSES]
    make_folder(tmp_path, spec={"classes": CLASSES, "colour_masks": False}, mask=colour_mask([[0, 1]], colours))
    with pytest.raises(DatasetError, match="masks/a.png: a label must be a single-channel"):
        ImageFolder(tmp_path, "train")[0]


def test_split_files_list_stems(tmp_path):
    make_folder(tmp_path, stems=("a", "b", "c"))
    (tmp_path / "val.txt").write_text("c\n# comment\n\na\n")
    assert [ImageFolder(tmp_path, "val").image_id(i) for i in range(2)] == ["c", "a"]
    (tmp_path / "test.txt").write_text("a\nzzz\n")
    with pytest.raises(DatasetError, match="test.txt:2: no image with stem 'zzz'"):
        ImageFolder(tmp_path, "test")
    (tmp_path / "test.txt").unlink()
    (tmp_path / "val.txt").write_text("c.png\na  # a stem\n")  # an image's file name names it too
    assert [ImageFolder(tmp_path, "val").image_id(i) for i in range(2)] == ["c", "a"]
    (tmp_path / "val.txt").write_text("c.jpg\n")  # but not another file's
    with pytest.raises(DatasetError, match="val.txt:1: no image with stem 'c.jpg'"):
        ImageFolder(tmp_path, "val")


def test_a_text_file_naming_no_image_is_refused_as_no_split_list(tmp_path):
    make_folder(tmp_path, stems=("a", "b"))
    (tmp_path / "notes.txt").write_text("Collected in May.\nAsk Ana about b.\n")
    with pytest.raises(DatasetError, match=r"notes\.txt:1: no image with stem 'Collected in May\.' in images/; "
                                           r"no line names one: every \.txt file"):
        ImageFolder(tmp_path, "train")


def test_a_split_file_saved_with_a_byte_order_mark_reads_its_first_stem_and_a_stem_listed_twice_is_refused(tmp_path):
    make_folder(tmp_path, stems=("a", "b", "c"))
    (tmp_path / "val.txt").write_text("c\na\n", encoding="utf-8-sig")  # as Notepad saves it
    assert [ImageFolder(tmp_path, "val").image_id(i) for i in range(2)] == ["c", "a"]
    (tmp_path / "val.txt").write_text("c\na\nc\n")
    with pytest.raises(DatasetError, match="val.txt:3: 'c' is listed again \\(also line 1\\)"):
        ImageFolder(tmp_path, "val")


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_a_link_whose_target_is_gone_is_refused_naming_it(tmp_path, folder):
    make_folder(tmp_path, stems=("a", "b"))
    (tmp_path / folder / "b.png").unlink()
    (tmp_path / folder / "b.png").symlink_to(tmp_path / "elsewhere" / "b.png")  # a mask that would be left out
    with pytest.raises(DatasetError, match=f"^{tmp_path / folder / 'b.png'}: a link to {tmp_path / 'elsewhere'}/b.png, "
                                           "which does not exist"):
        ImageFolder(tmp_path, "train", allow_unlabelled=True)


def test_a_stem_holding_a_hash_is_listed_whole_and_a_comment_after_a_stem_still_works(tmp_path):
    make_folder(tmp_path, stems=("scene #2", "a"))
    (tmp_path / "val.txt").write_text("scene #2\na  # the sunny one\n")
    assert [ImageFolder(tmp_path, "val").image_id(i) for i in range(2)] == ["scene #2", "a"]


def test_a_stem_holding_a_hash_may_have_a_comment_after_it_too(tmp_path):
    make_folder(tmp_path, stems=("scene #2", "a"))
    (tmp_path / "val.txt").write_text("scene #2  # the rainy one\na\n")
    assert [ImageFolder(tmp_path, "val").image_id(i) for i in range(2)] == ["scene #2", "a"]


def test_images_without_masks_only_in_unlabelled_split(tmp_path):
    make_folder(tmp_path)
    save(tmp_path / "images" / "pool.jpg", np.zeros((3, 5, 3), np.uint8))
    with pytest.raises(DatasetError, match="images/pool.jpg: missing label"):
        ImageFolder(tmp_path, "train")
    pool = ImageFolder(tmp_path, "unlabelled")
    assert len(pool) == 1 and pool.image_id(0) == "pool"
    sample = pool[0]
    assert sample.image.shape == (3, 5, 3) and (sample.label == 255).all() and sample.label.shape == (3, 5)


def test_invalid_class_list_names_the_file(tmp_path):
    make_folder(tmp_path, spec={"classes": [{"name": "road", "color": [1, 2]}]})
    with pytest.raises(DatasetError, match="classes.yaml: invalid class list: classes.0.color"):
        ImageFolder(tmp_path, "train")
    make_folder(tmp_path, spec={"classes": CLASSES, "ignore_value": 1})
    with pytest.raises(DatasetError, match="classes.yaml.*ignore_value 1 is also the id of class 'car'"):
        ImageFolder(tmp_path, "train")
    (tmp_path / "classes.yaml").unlink()
    with pytest.raises(DatasetError, match="no class list"):
        ImageFolder(tmp_path, "train")


def test_default_train_split_leaves_out_images_of_other_splits(tmp_path):
    root = make_folder(tmp_path)
    stems = sorted(p.stem for p in (root / "images").iterdir())
    (root / "val.txt").write_text(stems[0] + "\n")
    train = ImageFolder(root, "train")
    assert [train.image_id(i) for i in range(len(train))] == stems[1:]


def test_load_image_matches_load_and_never_reads_the_label(tmp_path):
    make_folder(tmp_path)
    save(tmp_path / "images" / "a.png", np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 20)
    for resize in (None, (4, 6)):
        dataset = ImageFolder(tmp_path, "train", resize=resize)
        assert np.array_equal(dataset.load_image(0), dataset.load(0).image)
        assert dataset.load_image(0).shape == (*(resize or (2, 2)), 3)
    (tmp_path / "masks" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="a.png"):
        dataset.load(0)
    assert dataset.load_image(0).shape == (4, 6, 3)


@pytest.fixture
def image_decodes(monkeypatch):
    """The image files decoded (by `read_image`) while the test runs."""
    decoded, read_image = [], data_io.read_image
    monkeypatch.setattr(data_io, "read_image", lambda path: decoded.append(path.name) or read_image(path))
    return decoded


def test_load_label_equals_loads_label_and_decodes_no_image(tmp_path, image_decodes):
    make_folder(tmp_path)
    sizes = (None, (4, 6))
    trains = [ImageFolder(tmp_path, "train", resize=resize) for resize in sizes]
    save(tmp_path / "images" / "pool.jpg", np.zeros((3, 5, 3), np.uint8))  # no mask: all-ignore
    # nearest from 2x2 to 4x6: each label pixel becomes a 2x3 block
    masks = (ID_MASK, np.repeat(np.repeat(ID_MASK, 2, axis=0), 3, axis=1))
    for resize, mask, train in zip(sizes, masks, trains):
        pool = ImageFolder(tmp_path, "unlabelled", resize=resize)
        labels = [train.load_label(0), train.load_label(1), pool.load_label(0)]
        assert image_decodes == []
        assert np.array_equal(labels[0], mask) and np.array_equal(labels[1], mask)
        assert labels[2].shape == (resize or (3, 5)) and (labels[2] == 255).all()
        assert all(np.array_equal(label, dataset.load(i).label)
                   for label, (dataset, i) in zip(labels, [(train, 0), (train, 1), (pool, 0)]))
        image_decodes.clear()


def test_a_label_of_another_size_is_refused_naming_it_before_the_image_is_decoded(tmp_path, image_decodes):
    make_folder(tmp_path)
    save(tmp_path / "masks" / "b.png", np.zeros((3, 2), np.uint8))
    message = r"masks/b\.png: label size \(3, 2\) \(H, W\) differs from image .*images/b\.png size \(2, 2\)"
    for resize in (None, (3, 2)):  # checked against the image on file, not the size it is resized to
        dataset = ImageFolder(tmp_path, "train", resize=resize)
        with pytest.raises(DatasetError, match=message):
            dataset.load_label(1)
        assert image_decodes == []
        with pytest.raises(DatasetError, match=message):
            dataset.load(1)
        image_decodes.clear()


def test_a_jpeg_mask_is_refused_naming_the_file(tmp_path):
    make_folder(tmp_path, stems=("a",))
    save(tmp_path / "images" / "b.png", np.zeros((2, 2, 3), np.uint8))
    save(tmp_path / "masks" / "b.jpg", np.zeros((2, 2, 3), np.uint8))  # would make b a pool image
    with pytest.raises(DatasetError, match=r"masks/b\.jpg: a JPEG mask.*save it as PNG \(b\.png\)"):
        ImageFolder(tmp_path, "train", allow_unlabelled=True)


def test_a_mask_saved_as_upper_case_png_labels_its_image_and_a_second_mask_is_refused(tmp_path):
    make_folder(tmp_path, stems=("a",))
    save(tmp_path / "images" / "b.png", np.zeros((2, 2, 3), np.uint8))
    save(tmp_path / "masks" / "b.PNG", ID_MASK[::-1])
    dataset = ImageFolder(tmp_path, "train")
    assert [dataset.image_id(i) for i in range(2)] == ["a", "b"]
    assert np.array_equal(dataset[1].label, [[2, 255], [0, 1]])
    save(tmp_path / "masks" / "b.png", ID_MASK)
    with pytest.raises(DatasetError, match=r"masks/b\.png: a second mask for image 'b' \(also .*masks/b\.PNG\)"):
        ImageFolder(tmp_path, "train")


def test_tiff_bmp_and_webp_images_are_read_and_any_other_file_in_images_is_refused_naming_it(tmp_path):
    make_folder(tmp_path, stems=())
    pixels = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 10
    (tmp_path / "images").mkdir()
    for stem, suffix in (("a", ".tif"), ("b", ".BMP"), ("c", ".webp")):
        lossless = {"lossless": True} if suffix == ".webp" else {}
        Image.fromarray(pixels).save(tmp_path / "images" / f"{stem}{suffix}", **lossless)
        save(tmp_path / "masks" / f"{stem}.png", ID_MASK)
    for system_file in (".DS_Store", "._a.tif", "Thumbs.db", "desktop.ini"):  # the OS's own: left alone
        (tmp_path / "images" / system_file).write_bytes(b"\0")
    (tmp_path / "masks" / "Thumbs.db").write_bytes(b"\0")
    (tmp_path / "._train.txt").write_bytes(b"\0\5\x16\7")  # macOS's AppleDouble file of a train.txt copied
    dataset = ImageFolder(tmp_path, "train")
    assert [dataset.image_id(i) for i in range(3)] == ["a", "b", "c"]
    assert all(np.array_equal(dataset[i].image, pixels) for i in range(3))
    (tmp_path / "images" / "d.heic").write_bytes(b"\0")  # would silently be missing from the pool
    with pytest.raises(DatasetError, match=r"images/d\.heic: not an image file of a kind this reads \(\.png, .*\)"):
        ImageFolder(tmp_path, "train")


def test_a_subfolder_of_images_or_masks_holding_files_is_refused_naming_it(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "images" / ".cache").mkdir()  # hidden, and empty folders, are left alone
    (tmp_path / "images" / "empty").mkdir()
    assert len(ImageFolder(tmp_path, "train")) == 2
    save(tmp_path / "images" / "batch2" / "c.png", np.zeros((2, 2, 3), np.uint8))  # would silently leave the pool
    with pytest.raises(DatasetError, match=r"images/batch2: a folder inside images/, which is read without its "
                                           r"subfolders: move its files up into images/ or the folder out"):
        ImageFolder(tmp_path, "train")
    (tmp_path / "images" / "batch2" / "c.png").rename(tmp_path / "images" / "c.png")
    save(tmp_path / "masks" / "batch2" / "c.png", ID_MASK)  # 'c' would be taken for an image without a mask
    with pytest.raises(DatasetError, match=r"masks/batch2: a folder inside masks/"):
        ImageFolder(tmp_path, "unlabelled")


def test_a_mask_without_its_image_is_refused_naming_the_file(tmp_path):
    make_folder(tmp_path)
    save(tmp_path / "masks" / "c.png", ID_MASK)
    with pytest.raises(DatasetError, match=r"masks/c\.png: no image with stem 'c' in images/"):
        ImageFolder(tmp_path, "train")
    (tmp_path / "masks" / "c.png").rename(tmp_path / "masks" / "a.tif")
    with pytest.raises(DatasetError, match=r"masks/a\.tif: masks must be PNG files named <image stem>\.png"):
        ImageFolder(tmp_path, "train")


def test_a_phone_photo_turned_by_exif_pairs_with_a_mask_painted_on_it_as_shown(tmp_path):
    root = make_folder(tmp_path, stems=())
    stored = np.zeros((2, 3, 3), np.uint8)  # stored landscape, shown portrait (EXIF orientation 6)
    exif = Image.Exif()
    exif[274] = 6
    (root / "images").mkdir()
    Image.fromarray(stored).save(root / "images" / "photo.jpg", exif=exif)
    shown_mask = np.array([[0, 1], [2, 0], [1, 2]], np.uint8)  # 3x2, as the annotator saw the photo
    save(root / "masks" / "photo.png", shown_mask)
    dataset = ImageFolder(root, "train")
    assert dataset.image_size(0) == (3, 2)
    sample = dataset[0]
    assert sample.image.shape[:2] == (3, 2) and np.array_equal(sample.label, shown_mask)


def test_image_problems_name_each_image_that_cannot_be_read_whole_in_order_large_ones_too(tmp_path, monkeypatch):
    monkeypatch.setattr(data_io, "LARGE_IMAGE_PIXELS", 150)  # 10x10 decoded on the threads, 20x20 one at a time
    make_folder(tmp_path, stems=())
    rng = np.random.default_rng(0)
    for stem, side in (("a", 10), ("b", 10), ("c", 20), ("d", 20)):
        save(tmp_path / "images" / f"{stem}.png", rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    for stem in ("b", "c"):  # cut short: the header reads, the pixels do not
        path = tmp_path / "images" / f"{stem}.png"
        path.write_bytes(path.read_bytes()[:-40])
    Image.fromarray(np.ones((10, 10), np.float32)).save(tmp_path / "images" / "e.tif")
    dataset = ImageFolder(tmp_path, "train", allow_unlabelled=True)
    problems = dataset.image_problems(range(len(dataset)))
    assert [problem.split(": ")[0].rsplit("/", 1)[1] for problem in problems] == ["b.png", "c.png", "e.tif"]
    assert all("corrupt image file" in problem for problem in problems[:2])
    assert "a floating-point image" in problems[2]
    assert dataset.image_problems([0, 3]) == []
