"""Active learning on a user's own folder of images, with masks for only a few of them
(`active.initial: labelled`): the masked train images are the initial labelled set, the others the
pool; a human answers through a folder of class-id PNGs, and resuming finishes the run."""

import re
import shutil
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import label_state, ledger_of, tiny_config
from s4al.active.cycle import ActiveLearningRun
from s4al.active.phases import CyclePhases
from s4al.annotation.answers import import_answers
from s4al.annotation.masks import AnswerError
from s4al.cli import app
from s4al.config import ConfigError, load_config, save_config
from s4al.data import DatasetError, build_dataset
from s4al.data.classes import IGNORE_INDEX
from s4al.errors import S4alWarning
from s4al.report.html import change_rows
from s4al.run_folder import RunFolder
from s4al.train.checkpoint import load_checkpoint

H, W = 32, 48
MASKED, UNMASKED, VAL = ["m0", "m1", "m2"], ["p0", "p1", "p2", "p3", "p4"], ["v0", "v1"]
CLASSES = [{"name": "road", "color": [128, 64, 128]}, {"name": "car", "color": [0, 0, 142]},
           {"name": "sky", "color": [70, 130, 180]}]


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def indexed_answers(folder, asked, index: int, palette) -> Path:
    """One indexed PNG per asked image under `palette`, `index` in its asked regions, 255 elsewhere."""
    folder.mkdir()
    for image_id in {r.image_id for r in asked}:
        indices = np.full((H, W), 255, np.uint8)
        for region in (r for r in asked if r.image_id == image_id):
            y0, x0, y1, x1 = region.box
            indices[y0:y1, x0:x1] = index
        mask = Image.fromarray(indices, mode="P")
        mask.putpalette([channel for colour in palette for channel in colour])
        mask.save(folder / f"{image_id}.png")
    return folder


def make_dataset(root, masked=MASKED, unmasked=UNMASKED, val=VAL):
    """Images with sky on top, road below; masks only for `masked` and `val`."""
    rng = np.random.default_rng(0)
    label = np.zeros((H, W), np.uint8)
    label[: H // 2] = 2
    image = np.array([c["color"] for c in CLASSES], np.uint8)[label]
    for stem in [*masked, *unmasked, *val]:
        save(root / "images" / f"{stem}.png", image + rng.integers(0, 20, image.shape, dtype=np.uint8))
        if stem not in unmasked:
            save(root / "masks" / f"{stem}.png", label)
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": CLASSES}))
    (root / "train.txt").write_text("".join(f"{stem}\n" for stem in sorted([*masked, *unmasked])))
    (root / "val.txt").write_text("".join(f"{stem}\n" for stem in val))
    return root


def own_config(root, **active):
    return tiny_config(
        dataset={"name": "folder", "root": str(root)},
        train={"epochs": 1, "iters_per_epoch": 1, "crop_size": [H, W], "device": "cpu"},
        ssl={"cold_start_epochs": 0},
        active={"initial": "labelled", "annotator": "external", "final_cycle_epoch_multiplier": 1.0, **active},
    )


def test_masked_images_start_labelled_the_rest_is_asked_and_png_answers_finish_the_run(tmp_path):
    cfg = own_config(make_dataset(tmp_path / "data"))
    run_dir = tmp_path / "run"
    assert ActiveLearningRun(run_dir, cfg).run() == []  # cycle 0 trained, asked, waits for answers
    assert (run_dir / "splits" / "initial_labelled.txt").read_text().split() == MASKED
    assert (run_dir / "splits" / "pool.txt").read_text().split() == UNMASKED
    with ledger_of(run_dir) as ledger, CyclePhases(ledger) as phases:
        assert {r.image_id for r in ledger.images() if r.initial} == set(MASKED)
        asked = ledger.asked()
        assert phases.phase(0) == "answer" and len(asked) == 2 * len(UNMASKED)
    assert {r.image_id for r in asked} == set(UNMASKED)

    answers = tmp_path / "answers"
    painted = {}
    for region in asked:
        mask = painted.setdefault(region.image_id, np.full((H, W), 255, np.uint8))
        y0, x0, y1, x1 = region.box
        mask[y0:y1, x0:x1] = 1
    for image_id, mask in painted.items():
        save(answers / f"{image_id}.png", mask)
    report = import_answers(run_dir, answers)
    assert sorted(report.answered) == sorted(r.region_id for r in asked) and report.still_asked == 0

    summaries = ActiveLearningRun(run_dir).run()
    assert [s["cycle"] for s in summaries] == [0, 1]
    assert summaries[0]["bought"]["class_pixels"]["car"] == sum(np.prod(r.shape) for r in asked)
    with ledger_of(run_dir) as ledger, CyclePhases(ledger) as phases:
        assert phases.phase(1) == "done" and ledger.asked() == []
        assert all(r.answered_by == "png-folder" and (ledger.patch(r) == 1).all() for r in ledger.answered())


def test_only_the_train_split_may_hold_images_without_masks(tmp_path):
    root = make_dataset(tmp_path)
    cfg = own_config(root).dataset
    train = build_dataset(cfg, "train")
    assert [train.has_label(i) for i in range(len(train))] == [i < len(MASKED) for i in range(len(train))]
    assert (train[len(MASKED)].label == 255).all() and train[0].label.shape == (H, W)
    (root / "train.txt").write_text("".join(f"{stem}\n" for stem in [*MASKED, "p0"]))
    (root / "val.txt").write_text("v0\np3\n")  # p3 has no mask
    with pytest.raises(DatasetError, match=r"images/p3.png: missing label, expected .*masks/p3.png"):
        build_dataset(cfg, "val")


def test_initial_labelled_is_refused_with_the_oracle_or_whole_images():
    with pytest.raises(ConfigError, match=r"active.initial 'labelled' \(your masks, a person answering\) needs "
                                          r"active.annotator: external and active.level: region: a person answers"):
        load_config("demo", {"active": {"initial": "labelled"}})
    with pytest.raises(ConfigError, match="active.level: region"):
        load_config("demo", {"active": {"initial": "labelled", "annotator": "external", "level": "image"}})


@pytest.mark.parametrize("masked, unmasked, active, problem", [
    (MASKED, UNMASKED, {"initial": "random"}, r"5 images without a label \(e.g. 'p0'\); set active.initial: labelled"),
    ([*MASKED, *UNMASKED], [], {}, "needs some images without a label"),
    ([], UNMASKED, {}, "needs some images with a label"),
])
def test_a_train_split_that_does_not_fit_the_initial_protocol_is_refused(tmp_path, masked, unmasked, active,
                                                                         problem):
    cfg = own_config(make_dataset(tmp_path / "data", masked, unmasked), **active)
    with pytest.raises(DatasetError, match=problem):
        ActiveLearningRun(tmp_path / "run", cfg)


def test_supervised_training_takes_the_masked_images_only_and_refuses_a_split_without_any(tmp_path):
    save_config(own_config(make_dataset(tmp_path / "data")), tmp_path / "own.yaml")
    trained = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "full"), "--config", str(tmp_path / "own.yaml"),
                                       "--quiet"])
    assert trained.exit_code == 0, trained.output
    assert "training on the 3 of 8 train images that have a label" in trained.output

    save_config(own_config(make_dataset(tmp_path / "bare", masked=[])), tmp_path / "bare.yaml")
    refused = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "none"), "--config", str(tmp_path / "bare.yaml"),
                                       "--quiet"])
    assert refused.exit_code == 1
    assert refused.output == f"error: train split 'train' of {tmp_path / 'bare'}: no image has a label\n"


def test_a_val_split_of_void_masks_is_refused_before_training(tmp_path):
    root = make_dataset(tmp_path / "data")
    for stem in VAL:
        save(root / "masks" / f"{stem}.png", np.full((H, W), IGNORE_INDEX, np.uint8))
    save_config(own_config(root), tmp_path / "own.yaml")
    said = (f"split 'val' of {root}: none of its 2 images holds a labelled pixel (every mask is void, or it has none): "
            "nothing to score")
    for command in ("train", "run"):
        out = tmp_path / command
        result = CliRunner().invoke(app, [command, "--out", str(out), "--config", str(tmp_path / "own.yaml"), "--quiet"])
        assert result.exit_code == 1 and said in " ".join(result.output.split()), result.output
        assert not RunFolder(out).checkpoint_path(0).exists()
    assert not (tmp_path / "train").exists()  # s4al train checks its data before it makes the folder


def add_images(root, masked=(), unmasked=()):
    """New images (sky over road) in the folder, listed in train.txt, masks for `masked`."""
    label = np.zeros((H, W), np.uint8)
    label[: H // 2] = 2
    image = np.array([c["color"] for c in CLASSES], np.uint8)[label]
    for stem in [*masked, *unmasked]:
        save(root / "images" / f"{stem}.png", image)
        if stem in masked:
            save(root / "masks" / f"{stem}.png", label)
    listed = (root / "train.txt").read_text().split()
    (root / "train.txt").write_text("".join(f"{stem}\n" for stem in sorted([*listed, *masked, *unmasked])))


def answer_every_asked_region(run_dir, tmp_path):
    answers = tmp_path / "answers"
    answers.mkdir(exist_ok=True)
    with ledger_of(run_dir) as ledger:
        asked = ledger.asked()
    for image_id in {r.image_id for r in asked}:
        save(answers / f"{image_id}.png", np.ones((H, W), np.uint8))
    import_answers(run_dir, answers)
    return asked


def answered_cycle_0(tmp_path):
    """The dataset, and a run of it whose cycle 0 trained and asked, every region answered since."""
    root = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    with ActiveLearningRun(run_dir, own_config(root)) as active_run:
        active_run.run()
    return root, run_dir, answer_every_asked_region(run_dir, tmp_path)


def test_images_added_to_the_folder_join_the_run_as_the_next_cycle_begins_training(tmp_path):
    root, run_dir, asked = answered_cycle_0(tmp_path)
    add_images(root, masked=["n0"], unmasked=["n1"])

    with ActiveLearningRun(run_dir) as active_run:
        summaries = active_run.run()  # cycle 1 (the final one) trains with the new images
    with ledger_of(run_dir) as ledger:
        records = {r.image_id: r for r in ledger.images()}
        (joined,) = ledger.get_meta("joined")
    assert set(records) == {*MASKED, *UNMASKED, "n0", "n1"}
    assert (records["n0"].initial, records["n1"].initial) == (True, False)
    assert (joined["before"], joined["labelled"], joined["pool"]) == ("cycle 1 training", ["n0"], ["n1"])
    # 10 images of 32x48 now: 3 + 1 masked whole, and 5 images x 2 answered 16x16 cells
    assert len(asked) == 10
    assert summaries[1]["labelled_fraction"] == pytest.approx((4 * H * W + 10 * 16 * 16) / (10 * H * W))
    assert summaries[0]["labelled_fraction"] == pytest.approx(3 / 8)  # before they joined
    ActiveLearningRun(run_dir, overrides={"active": {"cycles": 2}}).close()  # one more cycle asked for
    assert [text for _, text in change_rows(RunFolder(run_dir))] == [  # the report's record of them, in order
        "before cycle 1 training, joined: 1 labelled image, 1 pool image", "resumed with active.cycles 1 → 2"]


def test_a_bad_mask_given_to_a_pool_image_is_refused_before_it_joins_so_taking_it_back_resumes(tmp_path):
    root, run_dir, _ = answered_cycle_0(tmp_path)
    save(root / "masks" / "p0.png", np.full((H, W), 9, np.uint8))  # class 9 of 3
    with pytest.raises(DatasetError, match=r"masks/p0\.png: label values \[9\] are outside the valid set"):
        ActiveLearningRun(run_dir).run()
    with ledger_of(run_dir) as ledger:
        assert not {r.image_id: r for r in ledger.images()}["p0"].fully_labelled and not ledger.get_meta("joined")
    (root / "masks" / "p0.png").unlink()  # the mistake taken back: nothing of it is in the run
    assert len(ActiveLearningRun(run_dir).run()) == 2


def test_a_pool_image_added_cut_short_is_refused_before_it_joins_so_removing_it_resumes(tmp_path):
    root, run_dir, _ = answered_cycle_0(tmp_path)
    add_images(root, unmasked=["n1"])
    photo = root / "images" / "n1.png"
    photo.write_bytes(photo.read_bytes()[:-30])  # a copy cut short: its header reads, its pixels do not
    with pytest.raises(DatasetError, match=re.escape(f"{photo}: ") + "corrupt image file"):
        ActiveLearningRun(run_dir).run()
    with ledger_of(run_dir) as ledger:
        assert "n1" not in {r.image_id for r in ledger.images()} and not ledger.get_meta("joined")
    photo.unlink()  # an image the run holds may not leave it: this one never joined
    split = root / "train.txt"
    split.write_text(split.read_text().replace("n1\n", ""))
    assert len(ActiveLearningRun(run_dir).run()) == 2


def test_images_cut_short_when_a_run_is_made_are_refused_together_before_its_ledger_so_removing_them_resumes(
        tmp_path):
    root = make_dataset(tmp_path / "data")
    for stem in ("p1", "m2"):  # a pool image and a labelled one, their headers whole, their pixels not
        photo = root / "images" / f"{stem}.png"
        photo.write_bytes(photo.read_bytes()[:-30])
    run_dir = tmp_path / "run"
    with pytest.raises(DatasetError, match=r"^2 bad images: .*m2\.png: corrupt image file.*; .*p1\.png: corrupt"):
        ActiveLearningRun(run_dir, own_config(root))
    assert not (run_dir / "ledger.sqlite").exists()
    for stem in ("p1", "m2"):
        (root / "images" / f"{stem}.png").unlink()
        (root / "masks" / f"{stem}.png").unlink(missing_ok=True)
    split = root / "train.txt"
    split.write_text(split.read_text().replace("p1\n", "").replace("m2\n", ""))
    with ActiveLearningRun(run_dir) as active_run:
        assert sorted(active_run.ids) == sorted(set(MASKED + UNMASKED) - {"p1", "m2"})


def test_a_mask_given_to_a_pool_image_labels_it_whole_from_the_next_cycle_on(tmp_path):
    root, run_dir, asked = answered_cycle_0(tmp_path)
    given = np.full((H, W), 1, np.uint8)
    save(root / "masks" / "p0.png", given)  # p0, in the pool, labelled in another tool

    events = []
    with ActiveLearningRun(run_dir, progress=events.append) as active_run:
        summaries = active_run.run()
    with ledger_of(run_dir) as ledger:
        records = {r.image_id: r for r in ledger.images()}
        (joined,) = ledger.get_meta("joined")
        state = label_state(ledger)
        p0 = [i for i, r in enumerate(ledger.images()) if r.image_id == "p0"]
        answered_p0 = [r for r in ledger.answered() if r.image_id == "p0"]
    assert records["p0"].fully_labelled and not any(records[i].fully_labelled for i in UNMASKED[1:])
    assert (joined["before"], joined["labelled"], joined["pool"], joined["masked"]) == ("cycle 1 training", [], [],
                                                                                         ["p0"])
    assert [event for event in events if event["event"] == "joined"] == [  # said as they join
        {"event": "joined", "before": "cycle 1 training",
         "text": "1 pool image given a mask, labelled whole (p0; the mask answers what is still asked of it)"}]
    assert len(answered_p0) == 2 and p0[0] not in state.answered  # its answers stay recorded, the mask labels it
    # 8 images of 32x48: 3 masked from the start, p0 since, and 4 pool images x 2 answered 16x16 cells
    assert len(asked) == 10
    assert summaries[1]["labelled_fraction"] == pytest.approx((4 * H * W + 4 * 2 * 16 * 16) / (8 * H * W))


def test_status_says_what_the_next_resume_takes_from_the_dataset_or_refuses_in_it(tmp_path):
    root, run_dir, _ = answered_cycle_0(tmp_path)
    add_images(root, unmasked=["n1"])
    save(root / "masks" / "p0.png", np.full((H, W), 1, np.uint8))

    def status():
        result = CliRunner().invoke(app, ["status", str(run_dir)], env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        return result.output

    assert ("to join the run as the next cycle begins training or asking: 1 image added to the dataset (0 labelled, "
            "1 to the pool: n1); 1 pool image given a mask, labelled whole (p0; the mask answers what is still "
            "asked of it)\n") in status()
    (root / "images" / "p1.png").unlink()
    (root / "train.txt").write_text("".join(f"{stem}\n" for stem in [*MASKED, "p0", "p2", "p3", "p4", "n1"]))
    refusal = (f"{root}, split 'train': image 'p1': in this run's ledger but no longer in the dataset: put the image "
               "back (renamed? 'n1' was added, of the same size)")
    assert f"`s4al run --resume` refuses: {refusal}\n" in status()
    resumed = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "--quiet"], env={"COLUMNS": "250"})
    assert resumed.exit_code != 0 and refusal in " ".join(resumed.output.split())
    shutil.rmtree(root)
    assert f"the dataset cannot be read: {root}" in status()


def test_an_image_in_no_split_file_is_named_by_status_and_the_run_as_out_of_it(tmp_path):
    root, run_dir, _ = answered_cycle_0(tmp_path)
    save(root / "images" / "forgotten.png", np.zeros((H, W, 3), np.uint8))  # train.txt lists the train images
    warning = (f"warning: {root}, split 'train': 1 image in images/ but in no split file, so out of the run: "
               "'forgotten'; to add it to the run, list it in train.txt")
    said = CliRunner().invoke(app, ["status", str(run_dir)], env={"COLUMNS": "250"})
    assert said.exit_code == 0 and warning in " ".join(said.output.split()), said.output
    resumed = CliRunner().invoke(app, ["run", "--resume", str(run_dir), "--quiet"], env={"COLUMNS": "250"})
    assert resumed.exit_code == 0 and warning in " ".join(resumed.output.split()), resumed.output
    with ledger_of(run_dir) as ledger:
        assert "forgotten" not in {record.image_id for record in ledger.images()}
    (root / "train.txt").write_text((root / "train.txt").read_text() + "forgotten\n")
    said = CliRunner().invoke(app, ["status", str(run_dir)], env={"COLUMNS": "250"})
    assert "no split file" not in said.output and "1 to the pool: forgotten" in " ".join(said.output.split())


def test_status_counts_the_regions_a_given_mask_answers_apart_from_those_waiting(tmp_path):
    root = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    ActiveLearningRun(run_dir, own_config(root)).run()  # cycle 0 asks 2 regions of each of the 5 pool images
    save(root / "masks" / "p0.png", np.full((H, W), 1, np.uint8))
    said = CliRunner().invoke(app, ["status", str(run_dir)], env={"COLUMNS": "250"})
    assert said.exit_code == 0, said.output
    assert ("8 regions asked, waiting for answers (and 2 regions of images given a mask since: the masks answer them "
            "as the run resumes); the run goes on when none is left.") in " ".join(said.output.split())


def test_an_image_dropped_from_train_txt_is_refused_as_unlisted_not_as_gone(tmp_path):
    root, run_dir, _ = answered_cycle_0(tmp_path)
    split = root / "train.txt"
    split.write_text(split.read_text().replace("p2\n", ""))
    said = CliRunner().invoke(app, ["status", str(run_dir)], env={"COLUMNS": "250"})
    assert said.exit_code == 0, said.output
    assert (f"`s4al run --resume` refuses: {root}, split 'train': image 'p2': in this run's ledger but no longer "
            "listed in train.txt: list the image there again") in " ".join(said.output.split())
    assert "no split file" not in said.output  # it is the run's, not an image left out of it


def test_status_gives_its_account_past_an_unreadable_or_oddly_named_image_added(tmp_path):
    root, run_dir, _ = answered_cycle_0(tmp_path)
    (root / "images" / "p1.png").rename(root / "images" / "p{1}.png")  # a gone image, and one of its size added
    (root / "images" / "n9.png").write_bytes(b"")  # a copy interrupted at its start
    split = root / "train.txt"
    split.write_text(split.read_text().replace("p1\n", "p{1}\nn9\n"))
    said = CliRunner().invoke(app, ["status", str(run_dir)], env={"COLUMNS": "250"})
    assert said.exit_code == 0, said.output
    said = " ".join(said.output.split())
    assert ("image 'p1': in this run's ledger but no longer in the dataset: put the image back (renamed? 'p{1}' was "
            "added, of the same size)") in said
    assert "2 images added to the dataset (0 labelled, 2 to the pool: p{1}, n9)" in said


def test_a_mostly_void_mask_given_to_a_pool_image_is_warned_about_before_and_as_it_joins(tmp_path):
    root, run_dir, _ = answered_cycle_0(tmp_path)
    region_answer = np.full((H, W), 255, np.uint8)
    region_answer[8:16, 8:16] = 1  # 64 of 1,536 pixels labelled: an answer to one asked region, 96% void
    save(root / "masks" / "p0.png", region_answer)
    coarse = np.full((H, W), 255, np.uint8)
    coarse[H // 2:] = 1  # half void: a coarse label of the whole image
    save(root / "masks" / "p1.png", coarse)
    warning = ("warning: mostly void masks, each to label its image whole, never to be asked again: p0 (96% void); "
               "a mask answering a few asked regions belongs in `s4al import`, not in the dataset's masks")

    said = CliRunner().invoke(app, ["status", str(run_dir)], env={"COLUMNS": "250"})
    assert said.exit_code == 0 and warning in " ".join(said.output.split())
    events = []
    with ActiveLearningRun(run_dir, progress=events.append) as active_run:
        active_run.run()
    (joined,) = [event["text"] for event in events if event["event"] == "joined"]
    assert joined.endswith(warning) and "p1 (" not in joined


def test_status_gives_its_whole_account_past_a_given_mask_it_cannot_read(tmp_path):
    root, run_dir, _ = answered_cycle_0(tmp_path)
    save(root / "masks" / "p0.png", np.full((H, W, 3), (1, 2, 3), np.uint8))  # a colour no class has
    said = CliRunner().invoke(app, ["status", str(run_dir)], env={"COLUMNS": "250"})
    assert said.exit_code == 0, said.output
    assert "1 pool image given a mask, labelled whole (p0;" in said.output and "mostly void" not in said.output
    assert said.output.endswith("every region cycle 0 asked is answered or skipped.\n")  # the account's end


def test_images_added_before_a_trained_cycle_asks_are_scored_and_asked_with_the_pool(tmp_path):
    root = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    with ActiveLearningRun(run_dir, own_config(root)) as active_run:
        active_run._train(0)  # trained; the pool is scored next
    add_images(root, unmasked=["n1"])
    with ActiveLearningRun(run_dir) as active_run:
        active_run.run()
    with ledger_of(run_dir) as ledger:
        (joined,) = ledger.get_meta("joined")
        asked = ledger.asked(0)
    assert (joined["before"], joined["labelled"], joined["pool"]) == ("cycle 0 asking", [], ["n1"])
    assert sorted({r.image_id for r in asked}) == sorted([*UNMASKED, "n1"])  # 2 regions an image, n1's too


def test_an_image_added_without_a_label_to_a_run_that_needs_labels_is_refused_naming_it(tmp_path):
    root = make_dataset(tmp_path / "data", masked=[*MASKED, *UNMASKED], unmasked=[])
    cfg = tiny_config(dataset={"name": "folder", "root": str(root)},
                      train={"epochs": 1, "iters_per_epoch": 1, "crop_size": [H, W], "device": "cpu"})
    run_dir = tmp_path / "run"
    ActiveLearningRun(run_dir, cfg).close()
    add_images(root, masked=["n0"], unmasked=["n1"])
    with pytest.raises(DatasetError, match=r"image 'n1': added without a label, and with active.initial "
                                           r"'random' every image needs one: give the image a mask or move the "
                                           r"image out"):
        ActiveLearningRun(run_dir)


def test_an_initially_labelled_image_whose_mask_is_gone_is_refused_naming_it(tmp_path):
    root = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    ActiveLearningRun(run_dir, own_config(root)).close()
    (root / "masks" / "m1.png").unlink()  # it would train as an all-void image
    with pytest.raises(DatasetError, match=r"image 'm1': labelled whole in this run, but the mask left the "
                                           r"dataset \(training would read all void\): put the mask back"):
        ActiveLearningRun(run_dir)


def test_a_pool_image_resized_after_the_run_was_made_is_refused_naming_it(tmp_path):
    root = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    ActiveLearningRun(run_dir, own_config(root)).close()
    save(root / "images" / "p2.png", np.zeros((H, W + 16, 3), np.uint8))  # the ledger's regions are cells of 32x48
    with pytest.raises(DatasetError, match=r"image 'p2': changed size since the run was made: restore the "
                                           r"original"):
        ActiveLearningRun(run_dir)


def test_bad_masks_are_refused_all_together_before_training_not_at_the_batch_or_evaluation_meeting_them(tmp_path):
    root = make_dataset(tmp_path / "data")
    save(root / "masks" / "v1.png", np.full((H, W), 7, np.uint8))  # class 7 of 3
    run_dir = tmp_path / "run"
    seen = []
    with pytest.raises(DatasetError, match=r"masks/v1.png: label values \[7\] are outside the valid set"):
        ActiveLearningRun(run_dir, own_config(root, cycles=1), progress=seen.append).run()
    assert not [info for info in seen if info["event"] == "step"]  # not one step trained
    save(root / "masks" / "m0.png", np.zeros((H // 2, W), np.uint8))  # and two of the labelled train images'
    save(root / "masks" / "m2.png", np.full((H, W), 9, np.uint8))
    with pytest.raises(DatasetError) as refused:
        ActiveLearningRun(run_dir).run()
    assert re.fullmatch(r"3 bad masks: \S*masks/m0\.png: label size \(16, 48\) \(H, W\) differs from image \S*m0\.png "
                        r"size \(32, 48\); \S*masks/m2\.png: label values \[9\] are outside the valid set \[0, 1, 2, 255\]; "
                        r"\S*masks/v1\.png: label values \[7\] .*", str(refused.value)), str(refused.value)
    assert not [info for info in seen if info["event"] == "step"]
    save_config(own_config(root, cycles=1), tmp_path / "own.yaml")  # as a new run of the command line
    said = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "new"), "--config", str(tmp_path / "own.yaml"),
                                    "--quiet"])
    notes, _, error = said.output.partition("error: ")  # after the notes on the schedule, as the run starts
    assert said.exit_code == 1 and error.startswith("3 bad masks: ") and notes.startswith("note: "), said.output
    assert said.output.endswith(f"; once mended, `s4al run --resume {tmp_path / 'new'}` goes on\n")
    for stem in ("m0", "m2", "v1"):
        save(root / "masks" / f"{stem}.png", np.zeros((H, W), np.uint8))
    assert ActiveLearningRun(run_dir).run() == []  # mended: cycle 0 trains and asks
    # the class colours travel with the model: predict paints them wherever the dataset is
    assert load_checkpoint(run_dir / "checkpoints" / "cycle_0.pt")["colours"] == [c["color"] for c in CLASSES]


def test_masks_storing_a_class_as_the_ignore_value_are_warned_of_not_scored_as_perfect(tmp_path):
    """Two classes in 0/255 masks: with ignore_value 255 the object is void everywhere; the run says
    no labelled pixel holds it and the evaluation cannot measure it, rather than only a 100% mIoU."""
    root = make_dataset(tmp_path / "data")
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": [
        {"name": "background", "color": [0, 0, 0]}, {"name": "object", "color": [255, 0, 0]}]}))
    for mask in (root / "masks").iterdir():
        save(mask, np.where(np.array(Image.open(mask)) == 2, 255, 0).astype(np.uint8))
    save_config(own_config(root, cycles=1), tmp_path / "own.yaml")
    result = CliRunner().invoke(app, ["run", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "own.yaml"),
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert ("warning: no labelled pixel of class object: the model cannot learn it until some are labelled; 50% of "
            "the labelled pixels are void (the dataset's ignore value: does a mask store a class as it?)") in lines
    assert ("warning: the 2 evaluated images hold no pixel of class object: its IoU is not measured: mIoU "
            "averages the other classes") in lines
    assert sum(line.startswith("warning: the 2 evaluated images") for line in lines) == 1  # once, not per evaluation


def test_warnings_name_classes_without_labelled_pixels_and_a_large_void_share_only():
    from s4al.errors import S4alWarning
    from s4al.train.data import warn_unlabelled_classes

    names = ("road", "car", "sky")
    with pytest.warns(S4alWarning) as said:
        warn_unlabelled_classes(names, np.array([30, 0, 0]), void=9)
    assert str(said[0].message) == "no labelled pixel of class car, sky: the model cannot learn them until some are labelled"
    with pytest.warns(S4alWarning, match=r"of class car: .*; 25% of the labelled pixels are void"):
        warn_unlabelled_classes(names, np.array([20, 0, 10]), void=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unlabelled_classes(names, np.array([1, 1, 1]), void=1000)  # every class labelled: nothing said


def test_a_region_size_too_large_for_the_pool_images_is_said_before_cycle_0_trains(tmp_path):
    caught_before_training = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def progress(info):
            if info["event"] == "step" and not caught_before_training:
                caught_before_training.append([str(w.message) for w in caught])

        ActiveLearningRun(tmp_path / "run", own_config(make_dataset(tmp_path / "data"), region_size=40),
                          progress=progress).run()
    (said,) = caught_before_training
    assert (f"active.region_size 40 is larger than a side of {len(UNMASKED)} pool image(s), e.g. {H}x{W}: their "
            "cells are cut to the image") in said


def test_a_val_split_that_changed_between_cycles_is_said_once(tmp_path):
    root = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    ActiveLearningRun(run_dir, own_config(root)).close()
    save(root / "images" / "v2.png", np.zeros((H, W, 3), np.uint8))
    save(root / "masks" / "v2.png", np.zeros((H, W), np.uint8))
    (root / "val.txt").write_text("v0\nv2\n")
    with pytest.warns(S4alWarning) as said:
        ActiveLearningRun(run_dir).close()
    assert [str(w.message) for w in said] == [
        f"{root}: the val split holds 2 images now, 2 when this run was last opened (added: v2; removed: v1): cycles "
        "evaluated from now on are scored on another set than the earlier ones"]
    (root / "val.txt").write_text("v2\nv0\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ActiveLearningRun(run_dir).close()  # said once, and the order of the same images changes no score


def test_an_answer_file_named_in_another_unicode_form_answers_its_image(tmp_path):
    nfc = unicodedata.normalize("NFC", "straße_ü")
    root = make_dataset(tmp_path / "data", unmasked=["p0", nfc])
    run_dir = tmp_path / "run"
    with ActiveLearningRun(run_dir, own_config(root)) as active_run:
        active_run.run()
    answers = tmp_path / "answers"
    for image_id in ("p0", nfc):
        save(answers / f"{unicodedata.normalize('NFD', image_id)}.png", np.ones((H, W), np.uint8))  # as macOS names it
    assert unicodedata.normalize("NFD", nfc) != nfc
    report = import_answers(run_dir, answers)
    with ledger_of(run_dir) as ledger:
        assert {r.image_id for r in ledger.answered()} == {"p0", nfc} and report.still_asked == 0


def test_an_indexed_answer_mask_painting_the_class_colours_is_read_by_colour(tmp_path):
    """A paint program's indexed PNG numbers its colours in its own order: index 2 holds car's colour
    (car is class 1); white at index 255 is unpainted. Read by index, every region would be sky."""
    run_dir = tmp_path / "run"
    with ActiveLearningRun(run_dir, own_config(make_dataset(tmp_path / "data"))) as active_run:
        active_run.run()
        asked = active_run.ledger.asked()
    road, car, sky = (c["color"] for c in CLASSES)
    palette = [sky, road, car] + [[0, 0, 0]] * 252 + [[255, 255, 255]]
    answers = indexed_answers(tmp_path / "answers", asked, 2, palette)
    assert import_answers(run_dir, answers).still_asked == 0
    with ledger_of(run_dir) as ledger:
        assert all((ledger.patch(region) == 1).all() for region in ledger.answered())  # car


def test_an_rgba_answer_mask_is_read_by_the_class_colours_transparent_and_void_coloured_pixels_unpainted(tmp_path):
    """Car's colour in the top half of each asked region, the void colour (classes.yaml's ignore_color)
    in its bottom-left quarter, transparent elsewhere: the top half is answered car, the rest void.
    A colour no class has is refused, at its place."""
    root = make_dataset(tmp_path / "data")
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": CLASSES, "ignore_color": [255, 255, 255]}))
    run_dir = tmp_path / "run"
    with ActiveLearningRun(run_dir, own_config(root)) as active_run:
        active_run.run()
        asked = active_run.ledger.asked()
    answers = tmp_path / "answers"
    answers.mkdir()
    for image_id in {r.image_id for r in asked}:
        rgba = np.zeros((H, W, 4), np.uint8)  # transparent black
        for region in (r for r in asked if r.image_id == image_id):
            y0, x0, y1, x1 = region.box
            middle, centre = (y0 + y1) // 2, (x0 + x1) // 2
            rgba[y0:middle, x0:x1] = [*CLASSES[1]["color"], 255]
            rgba[middle:y1, x0:centre] = [255, 255, 255, 255]
        save(answers / f"{image_id}.png", rgba)
    wrong = tmp_path / "wrong"
    shutil.copytree(answers, wrong)
    some = sorted({r.image_id for r in asked})[0]
    y0, x0, _, _ = next(r for r in asked if r.image_id == some).box
    rgba = np.array(Image.open(wrong / f"{some}.png"))
    rgba[y0, x0] = [1, 2, 3, 255]
    save(wrong / f"{some}.png", rgba)
    with pytest.raises(AnswerError, match=re.escape(f"{some}.png: unknown mask colour (1, 2, 3) at row {y0}, "
                                                    f"column {x0}")):
        import_answers(run_dir, wrong)
    assert import_answers(run_dir, answers).still_asked == 0
    with ledger_of(run_dir) as ledger:
        for region in ledger.answered():
            patch, (y0, x0, y1, x1) = ledger.patch(region), region.box
            middle = (y1 - y0) // 2
            assert (patch[:middle] == 1).all() and (patch[middle:] == IGNORE_INDEX).all()


def test_a_class_named_void_is_said_to_be_trained_as_a_class_when_the_run_is_made(tmp_path):
    root = make_dataset(tmp_path / "data")
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": [*CLASSES, {"name": "Void", "color": [0, 0, 0]}]}))
    with pytest.warns(S4alWarning, match=re.escape(f"{root / 'classes.yaml'}: class 'Void' is trained as a class (its "
                                                   "regions asked, its IoU in the mIoU)")):
        ActiveLearningRun(tmp_path / "run", own_config(root)).close()


def test_a_labelled_photo_turned_half_by_its_exif_orientation_is_said_when_the_run_is_made_and_as_it_joins(tmp_path):
    """Turned half, a photo keeps its size: a mask painted on its stored pixels would pass every check."""
    root = make_dataset(tmp_path / "data")
    turned = np.array(Image.open(root / "images" / "m1.png"))
    (root / "images" / "m1.png").unlink()
    exif = Image.Exif()
    exif[274] = 3  # the EXIF Orientation tag: shown turned half
    Image.fromarray(turned[::-1, ::-1]).save(root / "images" / "m1.jpg", exif=exif)
    said = re.escape("1 labelled image with an EXIF orientation that turns or mirrors the picture without changing "
                     "its size (e.g. m1.jpg: orientation 3)")
    with pytest.warns(S4alWarning, match=said):
        ActiveLearningRun(tmp_path / "run", own_config(root)).close()
    other = make_dataset(tmp_path / "other")  # the same, but the turned photo joins with its mask as cycle 1 trains
    (other / "images" / "m1.png").unlink()
    (other / "masks" / "m1.png").rename(tmp_path / "m1_mask.png")
    (other / "train.txt").write_text((other / "train.txt").read_text().replace("m1\n", ""))
    with ActiveLearningRun(tmp_path / "joining", own_config(other)) as run:
        run.run()  # cycle 0 asks
    shutil.copy(root / "images" / "m1.jpg", other / "images" / "m1.jpg")
    (tmp_path / "m1_mask.png").rename(other / "masks" / "m1.png")
    (other / "train.txt").write_text((other / "train.txt").read_text() + "m1\n")
    answer_every_asked_region(tmp_path / "joining", tmp_path)
    with pytest.warns(S4alWarning, match=said), ActiveLearningRun(tmp_path / "joining") as run:
        run.run()


def test_a_mask_given_to_a_pool_image_while_its_regions_are_asked_answers_them(tmp_path):
    root = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    with ActiveLearningRun(run_dir, own_config(root)) as active_run:
        active_run.run()  # cycle 0 asks two regions of each pool image
    given = np.full((H, W), 2, np.uint8)
    save(root / "masks" / "p0.png", given)  # p0 labelled whole in another tool meanwhile
    answers = tmp_path / "answers"
    answers.mkdir()
    with ledger_of(run_dir) as ledger:
        for image_id in {r.image_id for r in ledger.asked()} - {"p0"}:
            save(answers / f"{image_id}.png", np.ones((H, W), np.uint8))
    assert import_answers(run_dir, answers).still_asked == 2  # p0's two
    status = CliRunner().invoke(app, ["status", str(run_dir)], env={"COLUMNS": "250"})
    assert ("every region cycle 0 asked is answered or skipped but 2 regions of images given a mask since, which "
            "answers them as the run resumes.") in status.output and "waiting for answers" not in status.output
    with ActiveLearningRun(run_dir) as active_run:
        summaries = active_run.run()  # goes on: the mask answers p0's regions
    assert [s["cycle"] for s in summaries] == [0, 1]
    with ledger_of(run_dir) as ledger:
        by_mask = [r for r in ledger.answered() if r.image_id == "p0"]
        assert len(by_mask) == 2 and all(r.answered_by == "dataset-mask" for r in by_mask)
        assert all((ledger.patch(r) == 2).all() for r in by_mask)
        assert {r.image_id: r for r in ledger.images()}["p0"].fully_labelled


def files_under(root):
    return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_a_query_into_the_dataset_folder_is_refused_and_leaves_the_dataset_as_it_was(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    with ActiveLearningRun(run_dir, own_config(root)) as active_run:
        active_run.run()  # cycle 0 asks regions of the pool images; the masked ones are its labelled set
    before = files_under(root)
    monkeypatch.chdir(root)
    for out in (".", "annotations"):
        result = CliRunner().invoke(app, ["query", str(run_dir), "--device", "cpu", "--out", out])
        assert (result.exit_code, result.output) == (1, (
            f"error: {out}: the dataset folder {root.resolve()} or a folder in it, where a query package could "
            "overwrite or remove the dataset's own files; give --out a folder outside it\n"))
        assert files_under(root) == before and not (root / "annotations").exists()


def test_a_run_folder_inside_the_dataset_folder_writes_its_own_query_package(tmp_path):
    root = make_dataset(tmp_path / "data")
    run_dir = root / "runs" / "mine"
    with ActiveLearningRun(run_dir, own_config(root)) as active_run:
        active_run.run()
    result = CliRunner().invoke(app, ["query", str(run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "queries" / "cycle_0" / "tasks.json").is_file()


# The PASCAL VOC colour map's first 21 entries and its 255 (void), as labelme and VOC's own masks hold them.
VOC_COLOURS = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128), (0, 128, 128),
               (128, 128, 128), (64, 0, 0), (192, 0, 0), (64, 128, 0), (192, 128, 0), (64, 0, 128), (192, 0, 128),
               (64, 128, 128), (192, 128, 128), (0, 64, 0), (128, 64, 0), (0, 192, 0), (128, 192, 0), (0, 64, 128)]
VOC_VOID = (224, 224, 192)


@pytest.mark.parametrize("sky", [[70, 130, 180], [128, 0, 0]], ids=["no class in a VOC colour", "sky in VOC's 1"])
def test_an_indexed_answer_mask_under_the_voc_colour_map_is_read_by_index_or_refused_where_colours_clash(
        tmp_path, sky):
    """Class-id masks saved with the VOC colour map paint car (index 1) in VOC's (128, 0, 0). Where that is
    no class's colour they are read by index; where it is sky's, by index the regions are car, by colour
    sky, and neither can be told right: refused, naming the file."""
    root = make_dataset(tmp_path / "data")
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": [CLASSES[0], CLASSES[1], {"name": "sky",
                                                                                            "color": sky}]}))
    run_dir = tmp_path / "run"
    with ActiveLearningRun(run_dir, own_config(root)) as active_run:
        active_run.run()
        asked = active_run.ledger.asked()
    palette = VOC_COLOURS + [(0, 0, 0)] * 234 + [VOC_VOID]
    answers = indexed_answers(tmp_path / "answers", asked, 1, palette)
    if sky == [128, 0, 0]:
        with pytest.raises(AnswerError, match=r"\.png: an indexed mask under the PASCAL VOC colour map .* paints index 1 "
                                              r"in the colour of class 2: read by index it is class 1, by colour class "
                                              r"2; save it as a greyscale PNG of class ids"):
            import_answers(run_dir, answers)
        return
    assert import_answers(run_dir, answers).still_asked == 0
    with ledger_of(run_dir) as ledger:
        assert all((ledger.patch(region) == 1).all() for region in ledger.answered())  # car
