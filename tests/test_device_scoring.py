"""Pool scoring and evaluation read from the device cache (the fast path, s4al/inference.py)
give the loader path's scores, regions and confusion matrix; the cache is decoded once per
process; mixed sizes, images too large to run whole and train.fast off keep the loader path."""

import gc
import math
import warnings
import weakref

import numpy as np
import pytest
import torch

from conftest import Counted, MixedSizes, active, needs_cuda, tiny_config
from s4al import distributed
from s4al.acquisition.pool import choose_images, choose_regions, score_cells, score_images
from s4al.data import build_dataset
from s4al import inference
from s4al.data.batches import image_batches, to_model_input
from s4al.data.base import DatasetError
from s4al.data import device_cache
from s4al.data.device_cache import DeviceCache, DeviceMemoryShort, LargeImages
from s4al.inference import cached_batches, inference_cache
from s4al.evaluate import evaluate
from s4al.model import build_model
from s4al.ssl.losses import supervised_loss
from s4al.tiles import TILE_SIDE
from s4al.train.trainer import Trainer
from s4al.train.data import TrainData

CPU = torch.device("cpu")
POOL = [3, 5, 6, 8, 11, 12, 17]
BOUGHT = {5: [(0, 0, 16, 16)], 11: [(16, 16, 32, 32), (32, 48, 48, 64)]}


@pytest.fixture(scope="module")
def setup():
    """A network trained for a few steps, so that it predicts several classes with varied confidence."""
    cfg = tiny_config()
    train, val = build_dataset(cfg.dataset, "train", cfg.seed), build_dataset(cfg.dataset, "val", cfg.seed)
    torch.manual_seed(0)
    model = build_model(cfg.model, train.classes.num_classes)
    batches = [(to_model_input(x, CPU), y.long()) for x, y, _ in image_batches(train, 4, 0, range(8))]
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for step in range(20):
        images, labels = batches[step % 2]
        optimizer.zero_grad()
        supervised_loss(model(images), labels).backward()
        optimizer.step()
    return cfg, train, val, model.eval()


# ---- pool scoring --------------------------------------------------------------------------------
def test_cell_scores_and_regions_from_the_device_cache_are_the_loader_paths(setup):
    cfg, train, _, model = setup
    a = active(cfg, metric="entropy", score_batch_size=3)
    loader = score_cells(model, train, POOL, BOUGHT, a, CPU, 0, fast="off")
    cached = score_cells(model, train, POOL, BOUGHT, a, CPU, 0, fast="on")
    assert sorted(cached) == POOL
    for i in POOL:
        assert np.array_equal(cached[i], loader[i]), i  # same batches, same arithmetic: bit-identical
    assert cached[5][0, 0] == -math.inf and np.isfinite(cached[3]).all()
    # other batch sizes: equal within float rounding, and the same regions are asked for
    other = score_cells(model, train, POOL, BOUGHT, active(cfg, metric="entropy", score_batch_size=5), CPU, 0,
                        fast="on")
    for i in POOL:
        np.testing.assert_allclose(other[i], loader[i], rtol=1e-5, atol=1e-6)
    sizes = {i: (48, 64) for i in POOL}
    for selection in (active(cfg, regions_per_image=2), active(cfg, selection="global", global_budget=9)):
        reference = [(q.index, q.box) for q in choose_regions(loader, sizes, selection)]
        assert [(q.index, q.box) for q in choose_regions(cached, sizes, selection)] == reference
        assert [(q.index, q.box) for q in choose_regions(other, sizes, selection)] == reference


def test_image_level_scores_and_coreset_from_the_device_cache_are_the_loader_paths(setup):
    cfg, train, _, model = setup
    pool = list(range(4, 20))
    loader = score_images(model, train, pool, "least_confidence", 3, CPU, 0, fast="off")
    assert score_images(model, train, pool, "least_confidence", 3, CPU, 0, fast="on") == loader
    for metric in ("entropy", "coreset"):
        a = active(cfg, level="image", metric=metric, score_batch_size=3)
        reference = choose_images(model, train, [0, 1, 2, 3], pool, 4, a, CPU, 0, fast="off")
        assert choose_images(model, train, [0, 1, 2, 3], pool, 4, a, CPU, 0, fast="on") == reference


def test_scoring_from_the_cache_never_loads_a_pool_images_label(setup):
    cfg, train, _, model = setup
    counted = Counted(train)
    score_cells(model, counted, POOL, {}, active(cfg), CPU, 0, fast="on")
    assert counted.loads == 0 and counted.image_loads == len(train)  # the whole split, images alone
    assert len(inference_cache(counted, CPU, "on", labels=False).labels) == 0  # not even a blank plane
    score_cells(model, counted, POOL[:2], {}, active(cfg), CPU, 0, fast="on")
    assert counted.image_loads == len(train)  # decoded once


def test_cache_batches_are_the_loaders_batches_and_ranks_share_them_alike(setup, monkeypatch):
    _, _, val, _ = setup
    cache = inference_cache(val, CPU, "on", labels=True)
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        loader = list(image_batches(val, 3, 0, [0, 1, 2, 3], shard=True))
        cached = list(cache.batches([0, 1, 2, 3], 3, labels=True))
        assert [ids for *_, ids in cached] == [ids for *_, ids in loader] == ([[0, 1, 2]] if rank == 0 else [[3]])
        for (images, labels, _), (old_images, old_labels, _) in zip(cached, loader):
            assert torch.equal(images, old_images) and torch.equal(labels, old_labels)
            assert images.dtype == torch.uint8 and labels.dtype == old_labels.dtype == torch.uint8


def test_forward_passes_on_a_cpu_run_in_fp32_without_autocast(setup):
    cfg, train, val, model = setup
    seen = []

    def record(module, inputs, output):
        seen.append((torch.is_autocast_enabled("cuda"), torch.is_autocast_enabled("cpu"), inputs[0].dtype,
                     output.dtype))

    hook = model.register_forward_hook(record)
    try:
        score_cells(model, train, POOL, {}, active(cfg), CPU, 0, fast="on")
        evaluate(model, val, 4, CPU, fast="on")
    finally:
        hook.remove()
    assert len(seen) == 2 + 1  # 7 pool images in batches of 4, 4 val images in one
    assert set(seen) == {(False, False, torch.float32, torch.float32)}


def test_the_head_gives_fp32_logits_under_autocast_so_that_close_classes_do_not_tie(setup):
    """bf16 keeps 8 significant bits: logits 10.0 and 10.03 would both be 10.0, and argmax gives the tie to
    the lower class id. The network runs in bf16 up to its decoder; the head (1x1 conv, upsampling) in fp32."""
    _, train, _, model = setup
    images = to_model_input(next(iter(image_batches(train, 2, 0, range(2))))[0], CPU)
    decoded = []
    hook = model.net.decoder.register_forward_hook(lambda module, inputs, output: decoded.append(output))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images)
    finally:
        hook.remove()
    assert decoded[0].dtype == torch.bfloat16 and logits.dtype == torch.float32
    with torch.no_grad():  # the head's own fp32 arithmetic on what the decoder gave
        conv, upsample = model.net.segmentation_head[0], model.net.segmentation_head[1]
        expected = upsample(torch.nn.functional.conv2d(decoded[0].float(), conv.weight, conv.bias))
    torch.testing.assert_close(logits, expected[..., : images.shape[-2], : images.shape[-1]], rtol=0, atol=0)
    assert torch.tensor([10.0, 10.03]).bfloat16().unique().numel() == 1  # what bf16 logits would have tied


# ---- evaluation ----------------------------------------------------------------------------------
def test_evaluation_from_the_device_cache_is_the_loader_paths_and_decodes_once(setup):
    cfg, _, val, model = setup
    counted = Counted(val)
    names = val.classes.names
    loader = evaluate(model, counted, 3, CPU, fast="off").as_dict(names)
    assert counted.loads == len(val)
    for batch_size in (3, 1, 4):
        assert evaluate(model, counted, batch_size, CPU, fast="on").as_dict(names) == loader
    assert counted.loads == 2 * len(val)  # the loader's pass, then the cache's only decode
    assert 0 < loader["pixel_accuracy"] < 1 and len({v for v in loader["iou"].values() if v}) > 1


def test_the_cache_built_for_scoring_gains_the_labels_when_evaluation_needs_them(setup):
    _, _, val, _ = setup
    counted = Counted(val)
    images_only = inference_cache(counted, CPU, "on", labels=False)
    assert len(images_only.labels) == 0 and counted.loads == 0
    labelled = inference_cache(counted, CPU, "on", labels=True)
    assert (counted.loads, counted.image_loads, counted.label_loads) == (0, len(val), len(val))  # images are held
    (row,) = labelled.label_rows([1])
    assert torch.equal(labelled.labels[row], torch.from_numpy(val.load(1).label))
    assert labelled.images.data_ptr() == images_only.images.data_ptr()
    assert inference_cache(counted, CPU, "on", labels=False) is labelled  # images and labels serve both


def test_the_cache_and_the_splits_images_go_with_their_dataset(setup):
    _, _, val, _ = setup
    counted = Counted(val)
    cache = inference_cache(counted, CPU, "on", labels=True)
    assert inference_cache(counted, CPU, "on", labels=True) is cache  # held while the dataset lives
    cache_ref, images_ref = weakref.ref(cache), weakref.ref(cache.images)
    del cache
    gc.collect()
    assert cache_ref() is not None and images_ref() is not None
    del counted
    gc.collect()
    assert cache_ref() is None and images_ref() is None


@pytest.mark.parametrize("fast", ["on", "off"])
def test_training_evaluates_from_the_cache_decoded_at_its_first_evaluation_only(setup, tmp_path, fast):
    cfg, train, val, _ = setup
    counted = Counted(val)
    cfg = tiny_config(ssl={"enabled": False}, train={"fast": fast, "epochs": 3, "iters_per_epoch": 1})
    history = Trainer(cfg, TrainData(train, labelled=list(range(8))), counted, tmp_path).fit().history
    assert len(history) == 3
    assert counted.loads == len(val) * (1 if fast == "on" else 3)


# ---- one copy of a split on the device ------------------------------------------------------------
def test_training_and_scoring_share_the_splits_images_and_label_planes_are_for_labelled_images_only(setup):
    _, train, _, _ = setup
    counted = Counted(train)
    training = DeviceCache(counted, labelled=[0, 1], pool=range(2, len(train)), device=CPU,
                           annotations={5: [((0, 0, 4, 4), np.zeros((4, 4), np.uint8))]})
    assert (counted.loads, counted.image_loads) == (2, len(train) - 2)  # each image decoded once
    assert training.labels.shape == (2, 48, 64) and training.known.shape == (2, 48, 64)  # 2 labelled, 1 answered
    held = training.images
    scoring = inference_cache(counted, CPU, "on", labels=False)
    assert counted.image_loads == len(train) - 2  # nothing decoded again
    assert scoring.images.data_ptr() == training.images.data_ptr() == held.data_ptr()  # not even copied
    for i in (0, 7):
        (row,) = scoring.rows([i])
        assert torch.equal(scoring.images[row], torch.from_numpy(train.load(i).image).permute(2, 0, 1))


def test_a_cache_that_grows_the_splits_images_counts_the_held_ones_it_copies(setup):
    """Growing the split's images allocates every row anew, the held ones copied in, while those
    are still held: that is the peak a fit is checked against, not the new rows alone."""
    _, train, _, _ = setup
    counted, plane = Counted(train), 48 * 64
    assert device_cache.cache_bytes(counted, [0, 1], [2, 3], CPU) == plane * (3 * 4 + 2 + 2)  # nothing held
    DeviceCache(counted, labelled=[0, 1], pool=[2, 3], device=CPU)
    assert counted.image_loads == 2  # the pool's two (the labelled ones are decoded with their labels)
    assert device_cache.cache_bytes(counted, [0, 1], [2, 3], CPU) == plane * (2 + 2)  # images all held
    assert device_cache.cache_bytes(counted, [0, 1], [2, 3, 4, 5], CPU, answered=1) == plane * (3 * 6 + 2 + 4)
    grown = DeviceCache(counted, labelled=[0, 1], pool=[2, 3, 4, 5], device=CPU)
    assert grown.images.shape[0] == 6 and counted.image_loads == 4  # the four held copied, not decoded
    for i in range(6):
        (row,) = grown.rows([i])
        assert torch.equal(grown.images[row], torch.from_numpy(train.load(i).image).permute(2, 0, 1))


def test_a_new_cycles_training_cache_decodes_only_the_labels(setup, tmp_path):
    _, train, _, _ = setup
    counted = Counted(train)
    cfg = tiny_config(train={"fast": "on", "epochs": 1, "iters_per_epoch": 1})
    for cycle, labelled in enumerate(([0, 1, 2, 3], [0, 1, 2, 3, 4])):
        data = TrainData(counted, labelled=labelled, pool=[i for i in range(len(train)) if i not in labelled])
        Trainer(cfg, data, None, tmp_path, cycle=cycle).fit()
    # cycle 0: 4 pairs and 16 images alone; cycle 1: the 5 labels alone, their images already held;
    # each cycle also reads its labels alone once for Balanced ClassMix's class counts
    assert (counted.loads, counted.image_loads, counted.label_loads) == (4, len(train) - 4, 4 + 5 + 5)


class FailsOnce(Counted):
    """Its fourth image cannot be read the first time it is asked for."""

    failed = False

    def load_image(self, index):
        if index == 3 and not self.failed:
            self.failed = True
            raise DatasetError("frame3.png: truncated")
        return super().load_image(index)


def test_a_failed_decode_leaves_no_unfilled_rows_behind(setup):
    _, train, _, _ = setup
    failing = FailsOnce(train)
    with pytest.raises(DatasetError, match="frame3.png"):
        DeviceCache(failing, labelled=[], pool=range(8), device=CPU)
    cache = DeviceCache(failing, labelled=[], pool=range(8), device=CPU)
    for i in range(8):
        (row,) = cache.rows([i])
        assert torch.equal(cache.images[row], torch.from_numpy(train.load(i).image).permute(2, 0, 1)), i


def test_a_split_too_large_for_the_devices_memory_is_refused_with_fast_on_before_anything_is_decoded(
        setup, tmp_path, monkeypatch):
    _, train, _, _ = setup
    huge = Counted(train, size=(200_000, 200_000))  # 120 GB an image: no machine has half of 8 of them free
    cfg = tiny_config(train={"fast": "on", "device": "cpu"})
    data = TrainData(huge, labelled=[0, 1], pool=list(range(2, 8)))
    with pytest.raises(LargeImages, match=r"train.fast is on: images of 200000x200000 are over 4,194,304 pixels"):
        Trainer(cfg, data, None, tmp_path)
    monkeypatch.setattr(device_cache, "WINDOWED_AUGMENT_PIXELS", 10**12)  # the memory itself
    with pytest.raises(DeviceMemoryShort, match=r"train.fast is on: the training cache would take \d+.\d GiB of cpu"):
        Trainer(cfg, data, None, tmp_path)
    assert huge.loads == huge.image_loads == 0


# ---- where the loader path stays -----------------------------------------------------------------
def test_off_auto_on_a_cpu_mixed_sizes_and_images_too_large_to_run_whole_keep_the_loader_path(setup):
    cfg, train, val, model = setup
    assert inference_cache(val, CPU, "off", labels=True) is None
    assert inference_cache(val, CPU, "auto", labels=True) is None
    mixed = MixedSizes(val)
    # decided before anything is decoded or allocated: auto on a CUDA device needs no GPU here
    assert inference_cache(mixed, torch.device("cuda"), "auto", labels=True) is None
    assert inference_cache(mixed, CPU, "on", labels=True) is None and mixed.loads == 0
    large = Counted(train, size=(TILE_SIDE + 1, TILE_SIDE))
    assert inference_cache(large, CPU, "on", labels=False) is None and large.image_loads == 0
    # and mixed sizes with fast on score and evaluate as before, from loader workers
    names = val.classes.names
    assert evaluate(model, mixed, 4, CPU, fast="on").as_dict(names) == evaluate(model, val, 4, CPU, fast="off").as_dict(names)
    mixed_train = MixedSizes(train)
    scored = score_cells(model, mixed_train, POOL, BOUGHT, active(cfg), CPU, 0, fast="on")
    reference = score_cells(model, train, POOL, BOUGHT, active(cfg), CPU, 0, fast="off")
    assert all(np.array_equal(scored[i], reference[i]) for i in POOL)


# ---- on a GPU ------------------------------------------------------------------------------------
@needs_cuda
def test_on_a_gpu_batches_fill_a_tile_and_the_forward_pass_runs_in_bf16(setup):
    cfg, train, val, model = setup
    cuda = torch.device("cuda")
    model = build_model(cfg.model, 9).to(cuda).eval()
    model.load_state_dict(setup[3].state_dict())  # trained: several classes predicted
    cache = inference_cache(train, cuda, "auto", labels=False)
    assert cache is not None and cache.images.is_cuda
    assert [len(ids) for *_, ids in cached_batches(cache, range(20), 4)] == [20]  # 48x64: a tile holds them all
    dtypes = []
    # the network in bf16 up to its head, which gives fp32 logits (test_the_head_gives_fp32_logits_under_autocast)
    hooks = [module.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
             for module in (model.net.decoder, model.net.segmentation_head)]
    try:
        a = active(cfg, regions_per_image=2)
        fast = score_cells(model, train, POOL, BOUGHT, a, cuda, 0, fast="auto")
    finally:
        for hook in hooks:
            hook.remove()
    assert dtypes == [torch.bfloat16, torch.float32]
    loader = score_cells(model, train, POOL, BOUGHT, a, cuda, 0, fast="off")
    for i in POOL:  # bf16 logits, fp32 softmax and entropy
        np.testing.assert_allclose(fast[i], loader[i], rtol=0, atol=0.05 * math.log(9))
    names = val.classes.names
    bf16, fp32 = (evaluate(model, val, 4, cuda, fast=fast).as_dict(names) for fast in ("auto", "off"))
    assert abs(bf16["pixel_accuracy"] - fp32["pixel_accuracy"]) < 0.02


@needs_cuda
def test_on_a_gpu_scoring_and_evaluation_wait_for_it_once_whatever_the_number_of_batches(setup, monkeypatch):
    """Under sync debug mode 'warn' every wait of the host for the GPU warns: the waits of a pass
    do not grow with its batches (the one copy of the scores or the confusion matrix at the end)."""
    cfg, train, val, _ = setup
    cuda = torch.device("cuda")
    model = build_model(cfg.model, 9).to(cuda).eval()
    cache = inference_cache(train, cuda, "on", labels=True)
    monkeypatch.setattr(inference, "TILE_SIDE", 48)  # one image per batch

    def waits(run) -> int:
        run()  # warm-up: lazy initialisation, cuDNN's choice of kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    a = active(cfg, score_batch_size=1)
    few, many = (waits(lambda: score_cells(model, train, pool, BOUGHT, a, cuda, 0, fast="on"))
                 for pool in (POOL[:2], POOL))
    assert few == many <= 2
    assert waits(lambda: evaluate(model, train, 1, cuda, fast="on")) <= 2  # 20 batches
    assert len(list(cached_batches(cache, range(5), 1))) == 5
