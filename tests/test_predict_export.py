"""Prediction on new images of unseen sizes, ONNX export checked with onnxruntime, and the
predict/export commands (s4al/deploy/predict.py, export.py, commands.py)."""

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from conftest import tiny_config
from s4al.data.io import read_image, resize_image
from s4al.data.synthetic import SYNTHETIC_CLASSES
from s4al.model import build_model
from s4al.deploy.commands import export_command, predict_command
from s4al.report.commands import report
from s4al.deploy.export import TOLERANCE, ExportError, export_onnx, max_difference
from s4al.deploy.predict import OVERLAY_ALPHA, OVERLAY_ROWS, overlay, predict
from s4al.train.checkpoint import UnfinishedCheckpoint, load_trained_model, save_checkpoint

SIZES = [(50, 70), (33, 47)]  # (H, W): the model was built for 48x64


def cli_app() -> typer.Typer:
    """A local app registering the commands exactly as s4al/cli.py does."""
    app = typer.Typer()
    app.command()(report)
    app.command(name="predict")(predict_command)
    app.command(name="export")(export_command)
    return app


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint in the trainer's format with randomly initialised weights (no training needed)."""
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg.model, SYNTHETIC_CLASSES.num_classes)
    state = model.state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "cycle_0.pt"
    save_checkpoint({"config": cfg.model_dump(mode="json"), "classes": list(SYNTHETIC_CLASSES.names),
                     "teacher": state, "student": state}, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for k, (h, w) in enumerate(SIZES):
        paths.append(folder / f"photo_{k}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def test_predict_writes_ids_palette_masks_and_overlays_at_each_image_size(checkpoint, images, tmp_path):
    written = predict(checkpoint, images, tmp_path, device="cpu").written
    assert written[-1] == tmp_path / "legend.png" and len(written) == 3 * len(images) + 1
    key = _read(tmp_path / "legend.png")[..., :3]
    assert all((key == colour).all(-1).any() for colour in SYNTHETIC_CLASSES.colors)  # a swatch per class
    palette = SYNTHETIC_CLASSES.palette()
    for path, (h, w) in zip(images, SIZES):
        labels = _read(tmp_path / f"{path.stem}_labels.png")
        mask = _read(tmp_path / f"{path.stem}_mask.png")
        blended = _read(tmp_path / f"{path.stem}_overlay.png")
        assert labels.shape == (h, w) and labels.dtype == np.uint8
        assert labels.max() < SYNTHETIC_CLASSES.num_classes
        assert mask.shape == (h, w, 3)
        np.testing.assert_array_equal(mask, palette[labels])
        expected = (1 - OVERLAY_ALPHA) * _read(path).astype(float) + OVERLAY_ALPHA * mask
        assert np.abs(blended - expected).max() <= 0.5 + 1e-6


def test_predict_labels_match_the_model_on_the_whole_image(checkpoint, images, tmp_path):
    predict(checkpoint, images[:1], tmp_path, device="cpu")
    model, _ = load_trained_model(checkpoint)
    pixels = (torch.from_numpy(_read(images[0])).permute(2, 0, 1)[None].float() / 255).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(pixels).argmax(1)[0].numpy()
    np.testing.assert_array_equal(_read(tmp_path / f"{images[0].stem}_labels.png"), expected)


def test_a_model_trained_on_resized_images_predicts_on_the_image_resized_so_at_the_images_size(images, tmp_path):
    cfg = tiny_config(dataset={"resize": [24, 32]})  # trained (and evaluated) on images resized to 24x32
    torch.manual_seed(0)
    model = build_model(cfg.model, SYNTHETIC_CLASSES.num_classes)
    with torch.no_grad():  # a head that tells pixels apart (a fresh one gives one class everywhere)
        model.net.segmentation_head[0].weight.normal_(0, 1, generator=torch.Generator().manual_seed(0))
        model.net.segmentation_head[0].bias.zero_()
    state = model.state_dict()
    checkpoint = tmp_path / "cycle_0.pt"
    save_checkpoint({"config": cfg.model_dump(mode="json"), "classes": list(SYNTHETIC_CLASSES.names),
                     "teacher": state, "student": state}, checkpoint)
    predict(checkpoint, images[:1], tmp_path / "out", device="cpu")
    model, _ = load_trained_model(checkpoint)
    with Image.open(images[0]) as photo:
        shown = np.array(photo.convert("RGB").resize((32, 24), Image.Resampling.BILINEAR))
    with torch.no_grad():
        small = model(torch.from_numpy(shown).permute(2, 0, 1)[None].float() / 255).argmax(1)[0].numpy()
    h, w = SIZES[0]
    expected = np.array(Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST))
    assert len(np.unique(expected)) > 3
    np.testing.assert_array_equal(_read(tmp_path / "out" / f"{images[0].stem}_labels.png"), expected)
    fixed = export_onnx(checkpoint, tmp_path / "small.onnx", dynamic=False)  # at the size it was trained at
    assert fixed.checked_shapes == ((1, 3, 24, 32),) and fixed.trained_at == (24, 32)
    session = onnxruntime.InferenceSession(str(fixed.path), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["s4al.trained_at"]) == [24, 32]


def test_a_checkpoint_of_a_training_not_finished_is_used_and_said_to_be_such(tmp_path):
    cfg = tiny_config()
    state = build_model(cfg.model, SYNTHETIC_CLASSES.num_classes).state_dict()
    checkpoint = tmp_path / "cycle_0.pt"
    for step, said in ((3, True), (10, False)):
        save_checkpoint({"config": cfg.model_dump(mode="json"), "classes": list(SYNTHETIC_CLASSES.names),
                         "teacher": state, "student": state, "step": step, "total_steps": 10}, checkpoint)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_trained_model(checkpoint)
        assert [str(w.message) for w in caught if w.category is UnfinishedCheckpoint] == (
            [f"{checkpoint}: of a training not finished, at step 3 of 10"] if said else [])


def test_predict_paints_the_colours_saved_in_the_checkpoint_wherever_the_dataset_is(images, tmp_path, monkeypatch):
    cfg = tiny_config(dataset={"name": "folder", "root": "my_data"})  # relative: read from where the run started
    torch.manual_seed(0)
    state = build_model(cfg.model, 2).state_dict()
    colours = [[10, 200, 30], [250, 0, 99]]
    checkpoint = tmp_path / "cycle_0.pt"
    save_checkpoint({"config": cfg.model_dump(mode="json"), "classes": ["weed", "crop"], "colours": colours,
                     "teacher": state, "student": state}, checkpoint)
    monkeypatch.chdir(tmp_path)  # no my_data/classes.yaml here
    predict(checkpoint, images[:1], tmp_path / "out", device="cpu")
    labels = _read(tmp_path / "out" / f"{images[0].stem}_labels.png")
    mask = _read(tmp_path / "out" / f"{images[0].stem}_mask.png")
    np.testing.assert_array_equal(mask, np.array(colours, np.uint8)[labels])


def test_predict_refuses_to_write_into_the_dataset_folder_the_checkpoint_was_trained_on(images, tmp_path, monkeypatch):
    cfg = tiny_config(dataset={"name": "folder", "root": "my_data"})
    state = build_model(cfg.model, 2).state_dict()
    checkpoint = tmp_path / "cycle_0.pt"
    save_checkpoint({"config": cfg.model_dump(mode="json"), "classes": ["weed", "crop"], "colours": [[0, 0, 0], [9, 9, 9]],
                     "teacher": state, "student": state}, checkpoint)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="^my_data/images: in the dataset folder my_data the checkpoint was trained on, "
                                         "where its outputs would join the dataset as images"):
        predict(checkpoint, images[:1], Path("my_data/images"), device="cpu")  # the next cycle would ask of them
    assert not (tmp_path / "my_data").exists()
    assert predict(checkpoint, images[:1], Path("predictions"), device="cpu").written


def test_predict_refuses_images_whose_outputs_would_collide(checkpoint, images, tmp_path):
    twin = tmp_path / "other" / images[0].name
    twin.parent.mkdir()
    twin.write_bytes(images[0].read_bytes())
    with pytest.raises(ValueError, match=f"{images[0]} and {twin}: the same file name stem '{images[0].stem}'"):
        predict(checkpoint, [images[0], twin], tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()
    again = images[0].parent / ".." / images[0].parent.name / images[0].name  # the same file, named otherwise
    written = predict(checkpoint, [images[0], again], tmp_path / "out", device="cpu").written
    assert [path.name for path in written] == [f"{images[0].stem}_{s}.png" for s in ("labels", "mask", "overlay")] + [
        "legend.png"]


@pytest.mark.parametrize("name", ["legend.png", "photo_mask.png"])
def test_predict_refuses_to_write_over_one_of_its_input_images(checkpoint, images, tmp_path, name):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo, victim = folder / "photo.png", folder / name
    for path in (photo, victim):
        path.write_bytes(images[0].read_bytes())
    with pytest.raises(ValueError, match=f"{victim}: an input image that predict would overwrite with its output"):
        predict(checkpoint, [photo, victim], folder, device="cpu")
    assert sorted(p.name for p in folder.iterdir()) == sorted({"photo.png", name})
    assert victim.read_bytes() == images[0].read_bytes()


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    return export_onnx(checkpoint, tmp_path_factory.mktemp("onnx") / "model.onnx", height=48, width=64)


def test_dynamic_export_matches_pytorch_on_its_probes(exported):
    assert exported.dynamic and exported.path.is_file()
    assert (1, 3, 48, 64) in exported.checked_shapes and len(exported.checked_shapes) == 2
    assert exported.max_abs_diff <= TOLERANCE


def test_dynamic_export_runs_other_batch_sizes_and_unseen_image_sizes(exported, checkpoint):
    model, _ = load_trained_model(checkpoint)
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    images = torch.rand(3, 3, 50, 70, generator=torch.Generator().manual_seed(1))
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    assert logits.shape == (3, SYNTHETIC_CLASSES.num_classes, 50, 70)
    np.testing.assert_allclose(logits, expected, atol=TOLERANCE, rtol=0)


def test_an_exported_file_names_its_sides_and_says_its_input_classes_and_colours(exported):
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    assert session.get_outputs()[0].shape == ["batch", SYNTHETIC_CLASSES.num_classes, "height", "width"]
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["s4al.classes"]) == list(SYNTHETIC_CLASSES.names) == list(exported.classes)
    assert json.loads(metadata["s4al.colours"]) == [list(c) for c in SYNTHETIC_CLASSES.colors]
    assert json.loads(metadata["s4al.trained_at"]) is None and metadata["s4al.network"] == "teacher"
    assert metadata["s4al.input"].startswith("float32 RGB in [0, 1], (batch, 3, height, width)")
    assert "interpolate(mode='bilinear', antialias=True)" in metadata["s4al.resize"]


def test_the_resize_an_exported_model_asks_for_is_the_one_training_made():
    """PIL's bilinear (s4al's resize) smooths as it shrinks, as torch's with antialias does; a
    plain bilinear, which samples 4 pixels, gives a textured image another input."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (240, 360, 3), dtype=np.uint8)
    ours = resize_image(image, (80, 120)).astype(np.float32)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    def largest_difference(antialias: bool) -> float:
        theirs = torch.nn.functional.interpolate(tensor, size=(80, 120), mode="bilinear", antialias=antialias)
        return float(np.abs(theirs[0].permute(1, 2, 0).round().clamp(0, 255).numpy() - ours).max())

    assert largest_difference(antialias=True) <= 1.0  # grey levels
    assert largest_difference(antialias=False) > 40.0


def test_an_export_failing_its_check_leaves_the_file_there_as_it_was(checkpoint, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the model exported last week")
    with pytest.raises(ExportError, match="nothing written"):
        export_onnx(checkpoint, target, height=48, width=64, dynamic=False, tolerance=-1.0)  # no model passes
    assert target.read_bytes() == b"the model exported last week"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_the_export_check_notices_a_different_model(exported, checkpoint):
    model, _ = load_trained_model(checkpoint)
    with torch.no_grad():
        model.net.segmentation_head[0].bias.add_(0.1)
    assert max_difference(model, exported.path, exported.checked_shapes) > TOLERANCE


def test_predict_command(checkpoint, images, tmp_path):
    result = CliRunner().invoke(
        cli_app(), ["predict", str(checkpoint), *map(str, images), "--out", str(tmp_path), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    written = sorted(["legend.png", "predicted_by.json",
                      *(f"{p.stem}_{kind}.png" for p in images for kind in ("labels", "mask", "overlay"))])
    assert sorted(p.name for p in tmp_path.iterdir()) == written
    assert json.loads((tmp_path / "predicted_by.json").read_text()) == {
        "checkpoint": str(checkpoint.resolve()), "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "network": "teacher", "classes": list(SYNTHETIC_CLASSES.names),
        "outputs": [name for name in written if name != "predicted_by.json"]}
    assert f"{len(images)} of {len(images)} images segmented into {tmp_path}" in " ".join(result.output.split())


def test_a_folder_predicted_into_itself_again_and_an_unreadable_image_cost_only_that_image(checkpoint, images, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in images[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / f"._{images[0].name}").write_bytes(b"\0\5\26\7 macOS metadata")  # hidden: not an image of the folder
    (folder / "b_cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    args = ["predict", str(checkpoint), str(folder), "--out", str(folder), "--device", "cpu"]
    result = CliRunner().invoke(cli_app(), args, env={"COLUMNS": "500"})
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert f"2 of 3 images segmented into {folder}" in said
    assert f"error: 1 not segmented: {folder / 'b_cut.jpg'}: unreadable image file" in said
    outputs = {f"{p.stem}_{kind}.png" for p in images[:2] for kind in ("labels", "mask", "overlay")} | {"legend.png"}
    assert {p.name for p in folder.iterdir()} == {p.name for p in images[:2]} | outputs | {
        f"._{images[0].name}", "b_cut.jpg", "predicted_by.json"}
    (folder / "b_cut.jpg").unlink()
    again = CliRunner().invoke(cli_app(), args, env={"COLUMNS": "500"})  # its earlier outputs are not taken as images
    assert again.exit_code == 0 and "2 of 2 images segmented" in " ".join(again.output.split())


def test_predict_replaces_no_file_of_the_users_nor_another_models_outputs(checkpoint, images, tmp_path):
    folder = tmp_path / "photos"  # an image beside its ground truth, named as predict names its colour mask
    folder.mkdir()
    photo, truth = folder / "c.png", folder / "c_mask.png"
    photo.write_bytes(images[0].read_bytes())
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(truth)
    given = truth.read_bytes()
    for out, taken in ((tmp_path / "predictions", tmp_path / "predictions" / "c_mask.png"), (folder, truth)):
        out.mkdir(exist_ok=True)
        if taken != truth:
            taken.write_bytes(given)
        with pytest.raises(ValueError, match=f"{taken}: already there, and not written by s4al predict"):
            predict(checkpoint, [photo], out, device="cpu")
        assert taken.read_bytes() == given and not (out / "predicted_by.json").exists()
    out = tmp_path / "mine"
    assert predict(checkpoint, [photo], out, device="cpu").written
    assert predict(checkpoint, [photo], out, device="cpu").written  # again: its own outputs
    (out / "d_mask.png").write_bytes(given)  # put there since, beside a new image d
    (folder / "d.png").write_bytes(images[1].read_bytes())
    with pytest.raises(ValueError, match=f"{out / 'd_mask.png'}: already there, and not written by s4al predict"):
        predict(checkpoint, [photo, folder / "d.png"], out, device="cpu")
    (out / "d_mask.png").unlink()
    other = tmp_path / "other.pt"  # another model: another palette and scores under the one legend
    state = torch.load(checkpoint, weights_only=True)
    state["teacher"] = {name: tensor + 1 if tensor.is_floating_point() else tensor
                        for name, tensor in state["teacher"].items()}
    save_checkpoint(state, other)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(ValueError, match=f"{out}: holds the outputs of another model \\({checkpoint.resolve()}, "
                                         "teacher, says predicted_by.json\\); give another --out"):
        predict(checkpoint=other, images=[images[1]], out_dir=out, device="cpu")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    with pytest.raises(ValueError, match="holds the outputs of another model"):
        predict(checkpoint, [photo], out, network="student", device="cpu")
    for path in out.glob("*.png"):  # the folder emptied of its outputs, not of its record: another model may write
        path.unlink()
    assert predict(other, [photo], out, device="cpu").written
    assert json.loads((out / "predicted_by.json").read_text())["checkpoint"] == str(other.resolve())


def test_an_image_too_large_for_the_memory_costs_only_itself(checkpoint, images, tmp_path, monkeypatch):
    import s4al.deploy.predict as predict_module

    def read(path):
        if path == images[0]:
            raise MemoryError
        return read_image(path)

    predict(checkpoint, images, tmp_path, device="cpu")
    monkeypatch.setattr(predict_module, "read_image", read)
    done = predict(checkpoint, images, tmp_path, device="cpu")  # its outputs of the run before go: none stay stale
    assert done.unread == [f"{images[0]}: too large to segment in this machine's memory; split it into smaller images"]
    assert [path.name for path in done.written] == [f"{images[1].stem}_{suffix}.png" for suffix in
                                                    ("labels", "mask", "overlay")] + ["legend.png"]
    assert not list(tmp_path.glob(f"{images[0].stem}_*"))


def test_predict_refuses_stems_that_differ_in_case_alone_unless_they_name_one_file(checkpoint, images, tmp_path):
    upper, lower = tmp_path / "Photo.png", tmp_path / "photo.jpg"  # one file name on macOS and Windows
    upper.write_bytes(images[0].read_bytes())
    Image.open(images[1]).save(lower)
    with pytest.raises(ValueError, match=f"{upper} and {lower}: file name stems 'Photo' and 'photo', one name on "
                                         "macOS and Windows"):
        predict(checkpoint, [upper, lower], tmp_path / "out", device="cpu")
    upper_too = tmp_path / "PHOTO.jpg"  # as "photo.jpg" on macOS or Windows, where it names the same file
    if not upper_too.exists():  # a disk that tells case apart
        os.link(lower, upper_too)
    other = tmp_path / "copy.jpg"  # another name of the file: another image, with outputs of its own
    os.link(lower, other)
    done = predict(checkpoint, [lower, upper_too, other], tmp_path / "out", device="cpu")
    assert [path.name for path in done.written] == [f"{stem}_{suffix}.png" for stem in ("photo", "copy")
                                                    for suffix in ("labels", "mask", "overlay")] + ["legend.png"]


def test_an_image_given_by_name_and_in_its_folder_is_counted_once(checkpoint, images, tmp_path):
    folder = images[0].parent
    result = CliRunner().invoke(cli_app(), ["predict", str(checkpoint), str(images[0]), str(folder), "--out",
                                            str(tmp_path), "--device", "cpu"], env={"COLUMNS": "500"})
    assert result.exit_code == 0, result.output
    assert f"{len(images)} of {len(images)} images segmented" in result.output


def test_export_and_evaluate_refuse_to_write_over_the_checkpoint_they_read(checkpoint, tmp_path, monkeypatch):
    import s4al.evaluate
    from s4al.cli import app

    copy = tmp_path / "cycle_0.pt"
    copy.write_bytes(checkpoint.read_bytes())
    result = CliRunner().invoke(cli_app(), ["export", str(copy), "--onnx", str(copy)], env={"COLUMNS": "500"})
    assert (result.exit_code, result.output) == (
        1, f"error: {copy}: is the checkpoint read; give another path for the ONNX file, which would replace it\n")
    monkeypatch.setattr(s4al.evaluate, "evaluate", lambda *args, **kwargs: pytest.fail("scored before the check"))
    for target, said in ((copy, "is the checkpoint read; give another path for the scores, which would replace it"),
                         (tmp_path, "is a folder; give the path of the file for the scores")):
        result = CliRunner().invoke(app, ["evaluate", str(copy), "--device", "cpu", "--json", str(target)],
                                    env={"COLUMNS": "500"})
        assert (result.exit_code, result.output) == (1, f"error: {target}: {said}\n")
    assert copy.read_bytes() == checkpoint.read_bytes()


def test_predict_command_takes_a_folder_for_its_images(checkpoint, images, tmp_path):
    folder = images[0].parent
    (folder / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(cli_app(), ["predict", str(checkpoint), str(folder), "--out", str(tmp_path),
                                            "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*_labels.png")) == sorted(f"{p.stem}_labels.png" for p in images)


def test_predict_command_rejects_an_unknown_network(checkpoint, images, tmp_path):
    result = CliRunner().invoke(cli_app(), ["predict", str(checkpoint), str(images[0]), "-o", str(tmp_path),
                                            "--network", "nope"], env={"COLUMNS": "500"})
    assert result.exit_code == 2 and "'nope' is not one of 'teacher', 'student'" in result.output


def test_predict_into_a_file_is_an_error_naming_it(checkpoint, images, tmp_path):
    taken = tmp_path / "masks"
    taken.write_text("not a folder")
    result = CliRunner().invoke(cli_app(), ["predict", str(checkpoint), str(images[0]), "-o", str(taken),
                                            "--device", "cpu"], env={"COLUMNS": "500"})
    assert (result.exit_code, result.output) == (1, f"error: {taken}: exists and is not a folder; give a folder for the output\n")
    assert taken.read_text() == "not a folder"


def test_export_command_fixed_size(checkpoint, tmp_path):
    onnx_path = tmp_path / "fixed.onnx"
    args = ["export", str(checkpoint), "--onnx", str(onnx_path), "--height", "48", "--width", "64", "--no-dynamic"]
    result = CliRunner().invoke(cli_app(), args)
    assert result.exit_code == 0, result.output
    assert "fixed 1x3x48x64" in result.output
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape] == [1, 3, 48, 64]


def test_export_refuses_an_unwritable_path_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    never_loaded = tmp_path / "missing.pt"  # the path is checked before the checkpoint is read
    with pytest.raises(ValueError, match=r"a_file/model\.onnx: cannot write the ONNX file there"):
        export_onnx(never_loaded, blocker / "model.onnx")
    with pytest.raises(ValueError, match=f"{tmp_path}: is a folder"):
        export_onnx(never_loaded, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_export_command_names_the_unwritable_path(checkpoint, tmp_path):
    (tmp_path / "a_file").write_text("")
    target = tmp_path / "a_file" / "model.onnx"
    result = CliRunner().invoke(cli_app(), ["export", str(checkpoint), "--onnx", str(target)], env={"COLUMNS": "500"})
    assert (result.exit_code, result.output) == (
        1, f"error: {target}: cannot write the ONNX file there (File exists: {target.parent})\n")


def test_overlay_of_an_image_taller_than_its_blending_chunk():
    image = np.full((2 * OVERLAY_ROWS + 6, 3, 3), 10, np.uint8)
    image[600:] = 90
    blended = overlay(image, np.full_like(image, 250), 0.5)
    assert (blended[:600] == 130).all() and (blended[600:] == 170).all()
