"""Inference on large images in tiles (s4al/tiles.py): the tile grid, pool scoring and prediction
stitched from tiles, and the memory of scoring a large image."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_config
from s4al import tiles as tiling
from s4al.acquisition.pool import image_features, score_cells, score_images
from s4al.acquisition.scores import entropy
from s4al.data import build_dataset
from s4al.data.batches import to_model_input
from s4al.evaluate import evaluate
from s4al.metrics import scores_from_confusion
from s4al.model import STRIDE, build_model
from s4al.deploy.predict import segment
from s4al.tiles import CONTEXT, TILE_SIDE, Tile, core_side, runs_whole, tiles

CPU = torch.device("cpu")


def test_images_up_to_the_tile_size_run_whole_as_one_tile():
    assert (TILE_SIDE, CONTEXT) == (2048, 128)
    for size in [(360, 480), (1024, 2048), (2048, 2048), (1440, 2560)]:
        assert runs_whole(*size)
        assert tiles(*size, 30) == [Tile((0, 0, *size), (0, 0, *size))]
    assert not runs_whole(2048, 2049) and not runs_whole(2160, 3840)


def test_tile_grid_of_a_3000x4000_image_with_30_pixel_cells():
    assert core_side(30) == 1770  # 59 cells: (2048 - 2 * 128 - 16) // 30 * 30
    rows = [((0, 1770), (0, 1898)), ((1770, 3000), (1632, 3000))]  # 1770 - 128 = 1642, down to 16k: 1632
    cols = [((0, 1770), (0, 1898)), ((1770, 3540), (1632, 3668)), ((3540, 4000), (3408, 4000))]
    expected = [Tile((y0, x0, y1, x1), (wy0, wx0, wy1, wx1))
                for (y0, y1), (wy0, wy1) in rows for (x0, x1), (wx0, wx1) in cols]
    assert tiles(3000, 4000, 30) == expected


@pytest.mark.parametrize("size, unit", [((3000, 4000), 30), ((2050, 9000), 43), ((5000, 2100), 1), ((4100, 4100), 16)])
def test_cores_partition_the_image_on_the_cell_grid_and_windows_stay_within_the_tile_size(size, unit):
    h, w = size
    covered = np.zeros(size, np.uint8)
    for tile in tiles(h, w, unit):
        (y0, x0, y1, x1), (wy0, wx0, wy1, wx1) = tile.core, tile.window
        covered[y0:y1, x0:x1] += 1
        assert y0 % unit == 0 and x0 % unit == 0
        assert wy0 % STRIDE == 0 and wx0 % STRIDE == 0
        assert wy1 - wy0 <= TILE_SIDE and wx1 - wx0 <= TILE_SIDE
        assert 0 <= max(0, y0 - CONTEXT) - wy0 < STRIDE and 0 <= max(0, x0 - CONTEXT) - wx0 < STRIDE
        assert (wy1, wx1) == (min(h, y1 + CONTEXT), min(w, x1 + CONTEXT))
    assert (covered == 1).all()


# A 96x128 image in tiles of 80 with 16 pixels of context: 32x32 cores (3 rows, 4 columns), windows
# worked out by hand from the cores.
SMALL_TILES = {"TILE_SIDE": 80, "CONTEXT": 16}
ROWS = [((0, 32), (0, 48)), ((32, 64), (16, 80)), ((64, 96), (48, 96))]
COLS = [((0, 32), (0, 48)), ((32, 64), (16, 80)), ((64, 96), (48, 112)), ((96, 128), (80, 128))]


@pytest.fixture
def small_tiles(monkeypatch):
    for name, value in SMALL_TILES.items():
        monkeypatch.setattr(tiling, name, value)


@pytest.fixture(scope="module")
def setup():
    cfg = tiny_config(dataset={"synthetic": {"num_train": 3, "num_val": 1, "height": 96, "width": 128}})
    dataset = build_dataset(cfg.dataset, "train", cfg.seed)
    torch.manual_seed(0)
    model = build_model(cfg.model, dataset.classes.num_classes).eval()
    return cfg, dataset, model


def stitched(model, image: np.ndarray, of_logits) -> torch.Tensor:
    """of_logits applied to the model's logits of each hand-listed window, cropped to its core."""
    batch = torch.from_numpy(image).permute(2, 0, 1)[None]
    rows = []
    for (y0, y1), (wy0, wy1) in ROWS:
        row = []
        for (x0, x1), (wx0, wx1) in COLS:
            with torch.no_grad():
                logits = model(to_model_input(batch[..., wy0:wy1, wx0:wx1], CPU))
            row.append(of_logits(logits)[0, y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0])
        rows.append(torch.cat(row, dim=1))
    return torch.cat(rows, dim=0)


def test_a_large_image_is_scored_from_its_tiles(setup, small_tiles):
    cfg, dataset, model = setup
    assert len(tiles(96, 128, 16)) == 12
    bought = {1: [(20, 20, 40, 70), (80, 112, 96, 128)]}  # one box over four cores, one a whole cell
    a = cfg.active.model_copy(update={"metric": "entropy", "region_size": 16})
    cells = score_cells(model, dataset, [1], bought, a, CPU, 0, fast="auto")[1]
    pixels = stitched(model, dataset.load_image(1), lambda logits: entropy(logits.softmax(1)))
    labelled = np.zeros((96, 128), bool)
    labelled[20:40, 20:70] = labelled[80:96, 112:128] = True
    expected = np.full((6, 8), -np.inf)
    for r in range(6):
        for c in range(8):
            rows, cols = slice(r * 16, (r + 1) * 16), slice(c * 16, (c + 1) * 16)
            cell = pixels[rows, cols][~labelled[rows, cols]]
            if cell.numel():
                expected[r, c] = cell.mean().item()
    np.testing.assert_allclose(cells, expected, rtol=1e-5, atol=1e-6)
    assert np.argwhere(cells == -np.inf).tolist() == [[5, 7]]  # the only cell bought whole
    mean = score_images(model, dataset, [1], "entropy", 4, CPU, 0, fast="auto")[1]
    assert mean == pytest.approx(pixels.mean().item(), rel=1e-5)


def test_a_large_image_is_segmented_from_its_tiles(setup, small_tiles):
    _, dataset, model = setup
    image = dataset.load_image(2)
    expected = stitched(model, image, lambda logits: logits.argmax(1)).numpy()
    shares = []
    np.testing.assert_array_equal(segment(model, image, CPU, progress=shares.append), expected)
    assert shares == [k / 12 for k in range(1, 13)]  # 12 tiles of 96x128 (small_tiles), each said as it is done


def test_a_large_image_is_evaluated_from_its_tiles(setup, small_tiles):
    _, dataset, model = setup
    confusion = np.zeros((dataset.classes.num_classes,) * 2, dtype=np.int64)
    for index in range(len(dataset)):
        sample = dataset.load(index)
        predicted = stitched(model, sample.image, lambda logits: logits.argmax(1)).numpy()
        known = sample.label != 255
        np.add.at(confusion, (sample.label[known].astype(np.int64), predicted[known]), 1)
    names = dataset.classes.names
    assert evaluate(model, dataset, 2, CPU, fast="auto").as_dict(names) == scores_from_confusion(torch.from_numpy(confusion)).as_dict(names)


def test_a_large_image_pools_its_tiles_features_weighted_by_core_area(setup, small_tiles):
    _, dataset, model = setup
    batch = torch.from_numpy(dataset.load_image(0)).permute(2, 0, 1)[None]
    expected = 0
    for (y0, y1), (wy0, wy1) in ROWS:
        for (x0, x1), (wx0, wx1) in COLS:
            with torch.no_grad():
                features = model.features(to_model_input(batch[..., wy0:wy1, wx0:wx1], CPU))
            expected = expected + features.mean(dim=(2, 3))[0] * (y1 - y0) * (x1 - x0) / (96 * 128)
    torch.testing.assert_close(image_features(model, dataset, [0], 1, CPU, fast="auto")[0], expected)


def test_an_image_that_runs_whole_scores_as_the_whole_image(setup):
    cfg, dataset, model = setup
    bought = {0: [(20, 20, 40, 70), (80, 112, 96, 128)]}  # one box over four cells, one a whole cell
    a = cfg.active.model_copy(update={"metric": "margin", "region_size": 16})
    cells = score_cells(model, dataset, [0, 1], bought, a, CPU, 0, fast="auto")[0]
    image = torch.from_numpy(dataset.load_image(0)).permute(2, 0, 1)[None]
    with torch.no_grad():
        probs = model(to_model_input(image, CPU)).float().softmax(1)[0].numpy()
    top2 = np.sort(probs, axis=0)[-2:]
    pixels = 1.0 - (top2[1] - top2[0])  # margin
    labelled = np.zeros((96, 128), bool)
    labelled[20:40, 20:70] = labelled[80:96, 112:128] = True
    expected = np.full((6, 8), -np.inf, np.float32)
    for r in range(6):
        for c in range(8):
            rows, cols = slice(r * 16, (r + 1) * 16), slice(c * 16, (c + 1) * 16)
            cell = pixels[rows, cols][~labelled[rows, cols]]
            if cell.size:
                expected[r, c] = cell.mean()
    np.testing.assert_allclose(cells, expected, rtol=1e-5, atol=1e-6)
    assert np.argwhere(cells == -np.inf).tolist() == [[5, 7]]


@pytest.mark.parametrize("fits", [False, True], ids=["tiled", "whole"])
def test_random_scores_of_any_image_are_one_draw_per_cell_from_the_seed_and_image_alone(setup, monkeypatch, fits):
    cfg, dataset, model = setup
    if not fits:
        for name, value in SMALL_TILES.items():  # 12 tiles of 2x2 cells each
            monkeypatch.setattr(tiling, name, value)
    assert len(tiles(96, 128, 16)) == (1 if fits else 12)
    a = cfg.active.model_copy(update={"metric": "random", "region_size": 16, "score_batch_size": 3})
    bought = {i: [(80, 112, 96, 128)] for i in range(3)}
    batch = score_cells(model, dataset, [0, 1, 2], bought, a, CPU, 7, fast="off")
    alone = score_cells(model, dataset, [1], bought, a.model_copy(update={"score_batch_size": 1}), CPU, 7, fast="off")
    other_seed = score_cells(model, dataset, [1], bought, a, CPU, 8, fast="off")
    grid = batch[1]
    assert grid.shape == (6, 8) and grid[5, 7] == -np.inf  # the bought cell
    draws = np.delete(grid.ravel(), 47)
    # 47 uniform draws, all different (a tile drawing its cells anew from the image's seed would
    # repeat them; a cell's mean of pixel draws would lie near 1/2)
    assert len(set(draws.tolist())) == 47 and draws.min() < 0.1 and draws.max() > 0.9 and draws.max() < 1
    assert np.array_equal(alone[1], grid)  # whatever else shares the batch
    assert not np.array_equal(batch[0], grid) and not np.array_equal(batch[2], grid)  # each image its own
    assert not np.array_equal(other_seed[1], grid)


MEASURE = textwrap.dedent("""
    import resource, sys, torch
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from conftest import tiny_config
    from s4al import tiles
    from s4al.acquisition.pool import score_cells
    from s4al.data.folder import ImageFolder
    from s4al.model import build_model
    tiles.TILE_SIDE = int(sys.argv[2])
    dataset = ImageFolder(Path(sys.argv[1]), "train", allow_unlabelled=True)
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg.model, dataset.classes.num_classes).eval()
    active = cfg.active.model_copy(update={"region_size": 30})
    cells = score_cells(model, dataset, [0], {}, active, torch.device("cpu"), 0, fast="auto")[0]
    assert torch.isfinite(torch.from_numpy(cells)).all()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # MiB
""")


def peak_scoring_mib(tmp_path: Path, size: tuple[int, int], tile_side: int) -> int:
    root = tmp_path / f"{size[0]}x{size[1]}"
    (root / "images").mkdir(parents=True)
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": [{"name": "a", "color": [1, 2, 3]},
                                                                   {"name": "b", "color": [4, 5, 6]}]}))
    pixels = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "images" / "photo.png", compress_level=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tests = str(Path(__file__).parent)
    done = subprocess.run([sys.executable, "-c", MEASURE, str(root), str(tile_side), tests],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def test_scoring_memory_does_not_grow_with_the_image(tmp_path, monkeypatch):
    """With tiles of 768 (so that the test runs in seconds), a 1200x1600 image must peak about as
    high as a 752x752 one, which runs whole and is larger than any of its windows. Run whole, the
    1200x1600 image peaked 480-530 MiB higher."""
    tile_side = 768
    monkeypatch.setattr(tiling, "TILE_SIDE", tile_side)
    assert runs_whole(752, 752) and not runs_whole(1200, 1600)
    assert max(max(t.window[2] - t.window[0], t.window[3] - t.window[1]) for t in tiles(1200, 1600, 30)) == 736
    whole = peak_scoring_mib(tmp_path, (752, 752), tile_side)
    tiled = peak_scoring_mib(tmp_path, (1200, 1600), tile_side)
    assert tiled - whole < 128, (whole, tiled)  # measured: 50 (the image's pixels, 5.5 MiB, a few copies)
