"""Against a real Label Studio server on 127.0.0.1: our labelling config makes a project, our tasks
import with their pre-annotations intact, and the server's own JSON export of an annotation made
from them imports into the ledger.

Label Studio pins packages of its own (Django, python-dateutil, ...), so it lives in a separate
virtual environment: python -m venv .venv-ls && .venv-ls/bin/pip install label-studio. The test
skips when neither that nor a `label-studio` on PATH exists, or when the server does not start."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import pytest
from label_studio_sdk import LabelStudio

from s4al.active.ledger import Ledger
from s4al.annotation.answers import import_answers
from s4al.annotation.label_studio import MODEL_VERSION, labelling_config, task
from s4al.data.classes import ClassSet
from test_annotation_answers import CLASSES, H, W, run_dir, truth  # noqa: F401 (run_dir is a fixture)

pytestmark = pytest.mark.slow

SEPARATE_VENV = Path(__file__).resolve().parents[1] / ".venv-ls" / "bin" / "label-studio"
STARTUP_SECONDS = 240  # the first start migrates a fresh database: about a minute on 2 cores
CLASS_SET = ClassSet(tuple(CLASSES), ((70, 130, 180), (128, 64, 128), (0, 0, 142)))


def label_studio_executable() -> str | None:
    return shutil.which("label-studio") or (str(SEPARATE_VENV) if SEPARATE_VENV.exists() else None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    executable = label_studio_executable()
    if executable is None:
        pytest.skip(f"label-studio is not installed (looked on PATH and at {SEPARATE_VENV})")
    data_dir = tmp_path_factory.mktemp("label-studio")
    port, token = free_port(), secrets.token_hex(20)
    command = [executable, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir), "--username", "s4al@example.com", "--password", secrets.token_hex(12),
               "--user-token", token, "--enable-legacy-api-token"]
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LATEST_VERSION_CHECK": "false"}
    with open(data_dir / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            if not wait_until_up(url, server, STARTUP_SECONDS):
                pytest.skip(f"Label Studio did not start within {STARTUP_SECONDS}s; see {data_dir / 'server.log'}")
            yield LabelStudio(base_url=url, api_key=token)
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # the server and the processes it started, nothing else
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def predicted(image_id):
    """What the 'model' predicts: the truth, with void as class 0."""
    return np.where(truth(image_id) == 255, 0, truth(image_id))


def our_tasks(run):
    """One task per image with asked regions."""
    with Ledger(run / "ledger.sqlite", readonly=True) as ledger:
        by_image = defaultdict(list)
        for region in ledger.asked():
            by_image[region.image_id].append(region)
    rng = np.random.default_rng(0)
    return [
        task(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), regions, predicted(image_id), CLASS_SET)
        for image_id, regions in by_image.items()
    ]


def test_label_studio_keeps_our_pre_annotations_and_its_export_imports(label_studio, run_dir, tmp_path):  # noqa: F811
    tasks = our_tasks(run_dir)
    project = label_studio.projects.create(title="s4al queries", label_config=labelling_config(CLASS_SET))
    label_studio.projects.import_tasks(id=project.id, request=tasks)
    assert label_studio.projects.get(id=project.id).model_version == MODEL_VERSION  # pre-labels with ours

    stored = {t.data["image_id"]: t for t in label_studio.tasks.list(project=project.id, fields="all")}
    assert sorted(stored) == ["a", "b"]
    for sent in tasks:
        kept = stored[sent["data"]["image_id"]]
        assert kept.data == sent["data"]
        (prediction,) = label_studio.predictions.list(task=kept.id)
        assert prediction.model_version == MODEL_VERSION
        assert json.loads(json.dumps(prediction.result)) == sent["predictions"][0]["result"]

    # the annotator accepts the pre-annotation of image 'a' and leaves 'b' for later
    (prediction_a,) = label_studio.predictions.list(task=stored["a"].id)
    label_studio.annotations.create(id=stored["a"].id, result=prediction_a.result, was_cancelled=False)
    export = tmp_path / "export.json"
    export.write_bytes(b"".join(label_studio.projects.exports.download_sync(
        id=project.id, export_type="JSON", download_all_tasks=True)))

    report = import_answers(run_dir, export)
    assert report.by == "label-studio" and report.answered == [1, 2] and report.still_asked == 1
    with Ledger(run_dir / "ledger.sqlite", readonly=True) as ledger:
        for region in ledger.answered():
            y0, x0, y1, x1 = region.box
            assert np.array_equal(ledger.patch(region), predicted("a")[y0:y1, x0:x1])
