import errno
import signal
import sqlite3
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch

from s4al.acquisition import scores
from s4al.active.label_state import LabelState
from s4al.active.ledger import Ledger, Region
from s4al.config import RunConfig, load_config
from s4al.data import build_dataset
from s4al.train.data import TrainData

# A suite started in the background by a shell without job control (`make test &`, nohup) inherits
# SIGINT ignored, and so do the processes its tests start: the tests of Ctrl-C need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Tiny tensors gain nothing from intra-op threads, and two threads per process thrash when the
# suite's subprocesses and DataLoader workers share a 2-core machine.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared"
CAMVID = SHARED / "data" / "camvid"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"


@pytest.fixture(autouse=True, scope="session")
def _temp_folder_in_basetemp(tmp_path_factory):
    """Every torchrun the tests start leaves a torchelastic_* folder in the temp folder: keep the
    subprocesses' temp files under pytest's own folder, not the machine's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp_path_factory.mktemp("tmp")))
        yield


def installed_package(folder: Path, name: str, module: str, entry_points: str) -> None:
    """A package as pip leaves it in site-packages: its module and a dist-info naming its entry points."""
    (folder / f"{name}.py").write_text(textwrap.dedent(module))
    info = folder / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def forget_plugins() -> None:
    """The packages' scores are read once a process: read them again."""
    scores.plugin_points.cache_clear()
    scores._plugin_function.cache_clear()


@pytest.fixture
def installed(tmp_path_factory, monkeypatch):
    """Installs packages for the test (`installed(name, module, entry_points)`), found by
    importlib.metadata as installed ones are, and forgets them and the scores they register after it."""
    folder = tmp_path_factory.mktemp("site-packages")
    monkeypatch.syspath_prepend(str(folder))
    names = []

    def install(name: str, module: str, entry_points: str) -> None:
        installed_package(folder, name, module, entry_points)
        names.append(name)
        forget_plugins()

    yield install
    forget_plugins()
    for name in names:
        sys.modules.pop(name, None)


TEMPERED_ENTROPY = """\
    import torch

    def tempered_entropy(probs, temperature=1.0):
        \"\"\"Entropy of the probabilities raised to 1 / temperature and normalised again.\"\"\"
        tempered = probs ** (1 / temperature)
        return torch.special.entr(tempered / tempered.sum(1, keepdim=True)).sum(1)
"""


@pytest.fixture
def score_plugin(installed) -> str:
    """A package of its own registering the score `tempered_entropy` (option: temperature)."""
    installed("tempered_scores", TEMPERED_ENTROPY, "[s4al.scores]\ntempered_entropy = tempered_scores:tempered_entropy\n")
    return "tempered_entropy"


needs_cuda = pytest.mark.cuda  # skipped without a CUDA device; `pytest -m cuda` runs these alone


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def tiny_config(**sections) -> RunConfig:
    """The demo preset shrunk for tests: 48x64 synthetic images, a few steps, no workers."""
    overrides = {
        "dataset": {"synthetic": {"num_train": 20, "num_val": 4, "height": 48, "width": 64}},
        "train": {"epochs": 2, "iters_per_epoch": 2, "crop_size": [48, 64], "batch_size": 2,
                  "unlabelled_batch_size": 2, "eval_every": 1, "num_workers": 0, "eval_batch_size": 4},
        "ssl": {"cold_start_epochs": 1, "replay_size": 4, "balanced_from_cycle": 0, "balanced_from_epoch": 1},
        "active": {"cycles": 1, "initial_fraction": 0.2, "region_size": 16, "regions_per_image": 2},
    }
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_config("demo", overrides)


def ssl_data(cfg: RunConfig) -> tuple[TrainData, torch.utils.data.Dataset]:
    """Four labelled training images and the rest unlabelled (semi-supervised), and the val split."""
    train = build_dataset(cfg.dataset, "train", cfg.seed)
    return TrainData(train, labelled=[0, 1, 2, 3], pool=list(range(4, len(train)))), build_dataset(
        cfg.dataset, "val", cfg.seed)


@pytest.fixture
def camvid_root() -> Path:
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"CamVid not present at {CAMVID}")
    return CAMVID


# ---- reading a ledger back in tests, through its public API ------------------------------------
def region_by_id(ledger: Ledger, region_id: int) -> Region:
    return {region.region_id: region for region in ledger.regions()}[region_id]


def initial_images(ledger: Ledger) -> list[str]:
    """The initially labelled image ids, in registration order."""
    return [record.image_id for record in ledger.images() if record.initial]


def label_map(ledger: Ledger, image_id: str) -> np.ndarray:
    """(H, W) uint8: the image's answered label patches pasted at their boxes, 255 elsewhere."""
    labels = np.full(ledger.image_size(image_id), 255, np.uint8)
    for region in ledger.answered():
        if region.image_id == image_id:
            y0, x0, y1, x1 = region.box
            labels[y0:y1, x0:x1] = ledger.patch(region)
    return labels


def label_state(ledger: Ledger) -> LabelState:
    """The ledger's LabelState, its images indexed in registration order."""
    return LabelState.read(ledger, {record.image_id: i for i, record in enumerate(ledger.images())})


# ---- small doubles and readers shared by several test files ------------------------------------
def active(cfg, **values):
    return cfg.active.model_copy(update=values)


def ledger_of(run_dir):
    return Ledger(run_dir / "ledger.sqlite", readonly=True)


def read_rows(path: Path, query: str) -> list[tuple]:
    """The rows of `query` through a read-only connection of its own, as another process reads the file."""
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        return conn.execute(query).fetchall()


class Counted(torch.utils.data.Dataset):
    """A split that counts its decodes (image and label pairs, images alone, labels alone)."""

    def __init__(self, base, size=None):
        self.base, self.classes, self.size = base, base.classes, size
        self.loads = self.image_loads = self.label_loads = 0

    def __len__(self):
        return len(self.base)

    def image_id(self, index):
        return self.base.image_id(index)

    def image_size(self, index):
        return self.size or self.base.image_size(index)

    def load(self, index):
        self.loads += 1
        return self.base.load(index)

    def load_image(self, index):
        self.image_loads += 1
        return self.base.load(index).image

    def load_label(self, index):
        self.label_loads += 1
        return self.base.load(index).label


class MixedSizes(Counted):
    """The last image is reported one row taller: the split has two sizes."""

    def image_size(self, index):
        h, w = self.base.image_size(index)
        return (h + 1, w) if index == len(self) - 1 else (h, w)


def disk_full_at(monkeypatch, save_number: int) -> None:
    """The ledger's label PNG writes fail with ENOSPC from the `save_number`-th on, as on a full disk."""
    from s4al.active import ledger as ledger_module

    real_save, saved = ledger_module._save_png, []

    def save_until_the_disk_is_full(path, patch):
        saved.append(path)
        if len(saved) >= save_number:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, patch)

    monkeypatch.setattr(ledger_module, "_save_png", save_until_the_disk_is_full)
