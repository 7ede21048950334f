"""Against a real Label Studio server on 127.0.0.1: our labelling config makes a project, our tasks
import with their pre-annotations intact, and the server's own JSON export of an annotation made
from them imports into the ledger; and a person in a browser labels two cycles of a run in one
project (the browser test, at the end).

Label Studio pins packages of its own (Django, python-dateutil, ...), so it lives in a separate
virtual environment (.ci/run makes it). The tests
skip when neither that nor a `label-studio` on PATH exists, or when the server does not start; the
browser test also skips without the system Chromium or the playwright package (no browser download)."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import tracemalloc
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from label_studio_sdk import LabelStudio

from conftest import label_state, region_by_id
from s4al.active.ledger import RUN_ID, Ledger
from s4al.annotation.answers import import_answers
from s4al.annotation.label_studio import MODEL_VERSION, labelling_config, task
from s4al.annotation import label_studio_api
from s4al.annotation.label_studio_api import PROJECT_META, LabelStudioError, send_query
from s4al.data.classes import ClassSet
from test_annotation_answers import CLASSES, H, W, run_dir, truth  # noqa: F401 (run_dir is a fixture)
from test_annotation_end_to_end import trained  # noqa: F401 (a fixture)

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


@dataclass(frozen=True)
class Server:
    url: str
    token: str
    email: str
    password: str


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Label Studio server on 127.0.0.1 with one user, offline (no version check)."""
    executable = label_studio_executable()
    if executable is None:
        pytest.skip(f"label-studio is not installed (looked on PATH and at {SEPARATE_VENV})")
    data_dir = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    started = Server(f"http://127.0.0.1:{port}", secrets.token_hex(20), "s4al@example.com", secrets.token_hex(12))
    command = [executable, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(data_dir), "--username", started.email, "--password", started.password,
               "--user-token", started.token, "--enable-legacy-api-token"]
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "LATEST_VERSION_CHECK": "false"}
    with open(data_dir / "server.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            if not wait_until_up(started.url, process, STARTUP_SECONDS):
                pytest.skip(not_started(process, data_dir / "server.log"))
            yield started
        finally:
            stop(process)


def not_started(process: subprocess.Popen, log: Path) -> str:
    if process.poll() is None:
        return f"Label Studio did not start within {STARTUP_SECONDS}s; see {log}"
    last_lines = log.read_text(errors="replace").strip().splitlines()[-1:]
    return f"Label Studio exited with code {process.returncode} at start ({' '.join(last_lines)}); see {log}"


def stop(process: subprocess.Popen) -> None:
    """The server and the processes it started, nothing else."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass  # every one of them exited already
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def label_studio(server):
    return LabelStudio(base_url=server.url, api_key=server.token)


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


# ---- the run's project, through the API (s4al query/import --label-studio) -----------------------

@pytest.fixture
def asking_run(trained, tmp_path):  # noqa: F811
    """A copy of a run whose cycle 0 has trained; its first query asks."""
    return shutil.copytree(trained, tmp_path / "run")


def s4al(*args, key):
    """`s4al ARGS` with LABEL_STUDIO_API_KEY set to `key` (None: unset): (exit code, stdout and stderr)."""
    from typer.testing import CliRunner

    from s4al.cli import app

    result = CliRunner().invoke(app, [str(arg) for arg in args], env={"LABEL_STUDIO_API_KEY": key})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def project_tasks(label_studio, project_id):
    return sorted(label_studio.tasks.list(project=project_id), key=lambda t: t.data["image_id"])


def test_query_sends_the_runs_tasks_to_one_project_once_and_import_takes_its_answers(
        server, label_studio, asking_run):
    projects_before = len(list(label_studio.projects.list()))
    code, output = s4al("query", asking_run, "--device", "cpu", "--label-studio", f"{server.url}/", key=server.token)
    assert code == 0, output
    package = asking_run / "queries" / "cycle_0"
    sent = sorted(json.loads((package / "tasks.json").read_text()), key=lambda t: t["data"]["image_id"])
    with Ledger(asking_run / "ledger.sqlite", readonly=True) as ledger:
        recorded, run_id = ledger.get_meta(PROJECT_META), ledger.get_meta(RUN_ID)
        asked = ledger.asked()
    assert recorded["url"] == server.url and f"annotate at {server.url}/projects/{recorded['id']}" in output
    assert f"sent {len(sent)} new tasks" in output and len(sent) > 1
    project = label_studio.projects.get(id=recorded["id"])
    assert project.title == f"run ({run_id[:8]})" and project.label_config == (package / "labelling_config.xml").read_text().strip()
    assert [t.data for t in project_tasks(label_studio, project.id)] == [t["data"] for t in sent]

    code, output = s4al("query", asking_run, "--device", "cpu", "--label-studio", server.url, key=server.token)
    assert code == 0 and "sent 0 new tasks" in output and f"{len(sent)} of the package's tasks there already" in output
    assert len(project_tasks(label_studio, project.id)) == len(sent) and "another of its tasks asks too" not in output
    label_studio.projects.import_tasks(id=project.id, request=sent[:2])  # tasks.json imported by hand as well
    copies = sorted(t.id for t in project_tasks(label_studio, project.id))[-2:]
    code, output = s4al("query", asking_run, "--device", "cpu", "--label-studio", server.url, key=server.token)
    assert code == 0 and (f"the project holds 2 tasks asking regions another of its tasks asks too: "
                          f"{copies[0]}, {copies[1]}; delete them in Label Studio") in " ".join(output.split())
    for task_id in copies:
        label_studio.tasks.delete(id=task_id)
    assert len(list(label_studio.projects.list())) == projects_before + 1
    code, output = s4al("query", asking_run, "--label-studio", "http://127.0.0.1:1", key=server.token)
    assert code == 1 and "http://127.0.0.1:1" in output and f"its project on {server.url}" in output
    assert f"s4al query {asking_run} --label-studio http://127.0.0.1:1 --new-project" in output

    # the annotator accepts the model's paint of the first task; the others wait
    first = project_tasks(label_studio, project.id)[0]
    (prediction,) = label_studio.predictions.list(task=first.id)
    label_studio.annotations.create(id=first.id, result=prediction.result, was_cancelled=False)
    code, output = s4al("import", asking_run, "--label-studio", key=server.token)
    assert code == 0, output
    (export,) = (asking_run / "answers").glob("label_studio_*.json")
    assert f"export, as received: {export}" in output
    assert len(json.loads(export.read_text())) == len(sent)
    assert not list(label_studio.projects.exports.list(id=project.id))  # its snapshot deleted once received
    with Ledger(asking_run / "ledger.sqlite", readonly=True) as ledger:
        answered = ledger.answered()
        height, width = ledger.image_size(first.data["image_id"])
        assert [r.region_id for r in answered] == first.data["region_ids"]
        assert len(ledger.asked()) == len(asked) - len(answered)
        model = model_labels(sent[0], height, width)
        for region in answered:
            y0, x0, y1, x1 = region.box
            assert np.array_equal(ledger.patch(region), model[y0:y1, x0:x1])
    assert f"answered {len(answered)} regions (label-studio)" in output
    code, output = s4al("import", asking_run, "--label-studio", "--dry-run", key=server.token)
    assert code == 0 and len(list((asking_run / "answers").glob("label_studio_*.json"))) == 2  # a dry run keeps both
    code, output = s4al("import", asking_run, "--label-studio", key=server.token)
    assert code == 0 and "removed 2 earlier downloads of the project's export" in output
    (latest,) = (asking_run / "answers").glob("label_studio_*.json")  # each holds the whole project
    assert latest.name > export.name

    label_studio.projects.delete(id=project.id)
    code, output = s4al("import", asking_run, "--label-studio", key=server.token)
    assert code == 1 and f"{server.url}: project {project.id} not found" in output


def test_a_refused_key_and_an_unreachable_server_are_one_line_naming_the_server(server, asking_run):
    code, output = s4al("query", asking_run, "--device", "cpu", "--label-studio", server.url, key="not-the-key")
    assert code == 1 and output.startswith(f"error: {server.url}: the API key was refused (HTTP 401: "), output
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, output = s4al("query", asking_run, "--device", "cpu", "--label-studio", closed, "--api-key", server.token,
                        key=None)
    assert code == 1 and output.startswith(f"error: {closed}: Label Studio server unreachable"), output
    with Ledger(asking_run / "ledger.sqlite", readonly=True) as ledger:
        assert ledger.get_meta(PROJECT_META) is None


def personal_access_token(server) -> str:
    """A personal access token of the server's user (the kind Label Studio's Account & Settings
    page gives by default): a refresh token the client trades for short-lived access tokens."""
    answer = httpx.post(f"{server.url}/api/token/", headers={"Authorization": f"Token {server.token}"}, timeout=60)
    assert answer.status_code == 201, answer.text
    return answer.json()["token"]


def test_a_personal_access_token_sends_the_tasks_and_imports_the_answers_until_it_is_revoked(
        server, label_studio, asking_run):
    token = personal_access_token(server)
    assert token.count(".") == 2  # a JWT, not a legacy token
    code, output = s4al("query", asking_run, "--device", "cpu", "--label-studio", server.url, key=token)
    assert code == 0 and "sent" in output, output
    with Ledger(asking_run / "ledger.sqlite", readonly=True) as ledger:
        project_id = ledger.get_meta(PROJECT_META)["id"]
    first = project_tasks(label_studio, project_id)[0]
    (prediction,) = label_studio.predictions.list(task=first.id)
    label_studio.annotations.create(id=first.id, result=prediction.result, was_cancelled=False)
    code, output = s4al("import", asking_run, "--label-studio", key=token)
    assert code == 0 and f"answered {len(first.data['region_ids'])} regions (label-studio)" in output, output

    revoked = httpx.post(f"{server.url}/api/token/blacklist/", json={"refresh": token},
                         headers={"Authorization": f"Token {server.token}"}, timeout=60)
    assert revoked.status_code == 204, revoked.text
    code, output = s4al("import", asking_run, "--label-studio", key=token)
    assert code == 1 and output.startswith(f"error: {server.url}: the API key was refused (HTTP 401: Token is "
                                           "blacklisted); give your access token in LABEL_STUDIO_API_KEY or --api-key"), output


def test_import_from_label_studio_before_any_query_sent_tasks_is_refused(asking_run):
    code, output = s4al("import", asking_run, "--label-studio", key="any")
    assert code == 1 and output == (f"error: {asking_run}: no Label Studio project yet; send the tasks first "
                                    f"with `s4al query {asking_run} --label-studio URL`\n")
    assert not (asking_run / "answers").exists()
    code, output = s4al("import", asking_run, key="any")
    assert code == 2 and "give ANSWERS (a file or folder) or --label-studio" in output


def test_tasks_the_server_refuses_are_one_error_naming_the_server_and_the_tasks(server, run_dir, tmp_path):  # noqa: F811
    package = tmp_path / "package"
    package.mkdir()
    (package / "labelling_config.xml").write_text(labelling_config(CLASS_SET))
    (package / "tasks.json").write_text(json.dumps([{"data": {"image_id": "a", "cycle": 0, "region_ids": [1]}}]))
    with Ledger(run_dir / "ledger.sqlite") as ledger, pytest.raises(LabelStudioError) as refused:
        send_query(ledger, "refused", package, server.url, server.token)  # the task has no image
    project_id = ledger_meta(run_dir)["id"]
    assert str(refused.value).startswith(f"{server.url}: project {project_id} refused the upload of tasks 1-1 of 1 "
                                         "new (HTTP 400: "), refused.value


def test_a_package_is_sent_in_batches_with_memory_that_does_not_grow_with_it(server, label_studio, run_dir,  # noqa: F811
                                                                              tmp_path, monkeypatch):
    """tasks.json is read one task at a time and uploaded in batches of at most UPLOAD_BYTES: a
    package of 36 tasks of 1 MB takes no more memory to send than one of 12 (parsed whole, it
    would take twice its 24 MB more)."""
    monkeypatch.setattr(label_studio_api, "UPLOAD_BYTES", 3 * 2**20)
    image = "data:image/jpeg;base64," + "A" * 2**20

    def peak_sending(cycle: int, count: int) -> int:
        package = tmp_path / f"cycle_{cycle}"
        package.mkdir()
        (package / "labelling_config.xml").write_text(labelling_config(CLASS_SET))
        tasks = [{"data": {"image": image, "image_id": "a", "cycle": cycle, "region_ids": [k]}} for k in range(count)]
        (package / "tasks.json").write_text(json.dumps(tasks))
        del tasks
        tracemalloc.start()
        try:
            with Ledger(run_dir / "ledger.sqlite") as ledger:
                sent = send_query(ledger, "large", package, server.url, server.token)
            assert (sent.sent, sent.already) == (count, 0)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak_sending(0, 2)  # the client's first requests import and cache what they need
    small, large = peak_sending(1, 12), peak_sending(2, 36)
    assert large < small + 4 * 2**20, (small, large)
    held = label_studio.tasks.list(project=ledger_meta(run_dir)["id"])
    assert sum(1 for _ in held) == 2 + 12 + 36


def ledger_meta(run):
    with Ledger(run / "ledger.sqlite", readonly=True) as ledger:
        return ledger.get_meta(PROJECT_META)


def test_a_deleted_project_is_replaced_by_a_new_one_that_gets_every_task_still_asked(
        server, label_studio, asking_run):
    query = ("query", asking_run, "--device", "cpu", "--label-studio", server.url)
    code, output = s4al(*query, key=server.token)
    assert code == 0, output
    old = ledger_meta(asking_run)["id"]
    with Ledger(asking_run / "ledger.sqlite") as ledger:  # an answer imported before the project went
        first = ledger.asked()[0]
        ledger.answer(first.region_id, np.full(first.shape, 2, np.uint8), by="label-studio")
        still_asked = sorted(r.region_id for r in ledger.asked())
    label_studio.projects.delete(id=old)

    way_out = f"to send the tasks to a new project: s4al query {asking_run} --label-studio {server.url} --new-project"
    for command in (query, ("import", asking_run, "--label-studio")):
        code, output = s4al(*command, key=server.token)
        assert code == 1 and f"{server.url}: project {old} not found (deleted?)" in output and way_out in output

    code, output = s4al(*query, "--new-project", key=server.token)
    assert code == 0, output
    new = ledger_meta(asking_run)
    assert new["url"] == server.url and new["id"] != old
    assert f"in place of project {old} on {server.url}: import the answers left there" in output
    held = [region_id for t in project_tasks(label_studio, new["id"]) for region_id in t.data["region_ids"]]
    assert sorted(held) == still_asked and first.region_id not in held
    with Ledger(asking_run / "ledger.sqlite", readonly=True) as ledger:
        (answered,) = ledger.answered()
        assert answered.region_id == first.region_id and (ledger.patch(answered) == 2).all()
        assert sorted(r.region_id for r in ledger.asked()) == still_asked
    code, output = s4al(*query, key=server.token)  # later queries go to the new project, sending nothing twice
    assert code == 0 and f"sent 0 new tasks to Label Studio project {new['id']}" in output
    code, output = s4al("import", asking_run, "--label-studio", key=server.token)
    assert code == 0 and "nothing to import" in output and "kept" not in output  # the answer's task: in the old one


def test_a_server_moved_to_another_address_keeps_the_runs_project_given_by_its_id(server, label_studio, asking_run):
    query = ("query", asking_run, "--device", "cpu", "--label-studio", server.url)
    code, output = s4al(*query, key=server.token)
    assert code == 0, output
    before = ledger_meta(asking_run)
    with Ledger(asking_run / "ledger.sqlite") as ledger:  # as if it was sent to the server at its old address
        ledger.set_meta(PROJECT_META, {**before, "url": "http://old-host:8080"})
    code, output = s4al(*query, key=server.token)
    assert code == 1 and (f"where that server moved here with its projects: s4al query {asking_run} --label-studio "
                          f"{server.url} --project {before['id']}; or to send the tasks to a new project") in " ".join(
                              output.split()), output
    code, output = s4al(*query, "--project", before["id"], key=server.token)
    assert code == 0 and "sent 0 new tasks" in output and "in place of" not in output, output
    assert "this run's from now on" not in output  # the run's all along
    assert ledger_meta(asking_run) == before  # its address now, and since when it is the run's, as it was
    code, output = s4al("import", asking_run, "--label-studio", key=server.token)
    assert code == 0 and "nothing to import" in output, output

    assert s4al("skip", asking_run, key=None)[0] == 0  # nothing asked now: a query still records the address
    with Ledger(asking_run / "ledger.sqlite") as ledger:
        ledger.set_meta(PROJECT_META, {**before, "url": "http://old-host:8080"})
    code, output = s4al(*query, "--project", before["id"], key=server.token)
    assert code == 0 and (f"no region waits for an answer (cycle 0 is in phase 'answer'). Label Studio project "
                          f"{server.url}/projects/{before['id']} is this run's.") in " ".join(output.split()), output
    assert ledger_meta(asking_run) == before


def test_a_project_holding_another_runs_tasks_is_refused_before_anything_is_sent(
        server, label_studio, asking_run, tmp_path):
    other = shutil.copytree(asking_run, tmp_path / "other")
    with Ledger(other / "ledger.sqlite") as ledger:
        ledger.set_meta(RUN_ID, "f" * 32)  # another run, of the same data: its regions have the same numbers
    code, output = s4al("query", asking_run, "--device", "cpu", "--label-studio", server.url, key=server.token)
    assert code == 0, output
    project = ledger_meta(asking_run)["id"]
    tasks = [t.id for t in project_tasks(label_studio, project)]
    with Ledger(asking_run / "ledger.sqlite", readonly=True) as ledger:
        run_id = ledger.get_meta(RUN_ID)

    code, output = s4al("query", other, "--device", "cpu", "--label-studio", server.url, "--project", project,
                        key=server.token)
    output = " ".join(output.split())
    assert code == 1 and (f"{server.url}/projects/{project}: project {project} holds tasks of another run (task "
                          f"{min(tasks)}, image '") in output, output
    assert (f"run id {run_id[:8]}; this run's is ffffffff): a project serves one run, whose imports refuse any "
            f"other's answers. Give this run's own project, s4al query {other} --label-studio {server.url} --project "
            f"ID, or to send the tasks to a new project: s4al query {other} --label-studio {server.url} "
            "--new-project") in output
    assert ledger_meta(other) is None and [t.id for t in project_tasks(label_studio, project)] == tasks
    code, output = s4al("query", other, "--device", "cpu", "--label-studio", server.url, key=server.token)
    assert code == 0 and ledger_meta(other)["id"] != project  # a project of its own

    theirs = json.loads((other / "queries" / "cycle_0" / "tasks.json").read_text())
    label_studio.projects.import_tasks(id=project, request=theirs[:1])  # by hand, into the first run's project
    code, output = s4al("query", asking_run, "--device", "cpu", "--label-studio", server.url, key=server.token)
    assert code == 1 and ("this run's is " + run_id[:8] + "): a project serves one run, whose imports refuse any "
                          "other's answers. This run's project: delete the other run's tasks in Label Studio, or to "
                          f"send the tasks to a new project: s4al query {asking_run} --label-studio {server.url} "
                          "--new-project") in " ".join(output.split()), output


def test_a_run_labelled_in_a_hand_made_project_moves_to_the_api_in_that_project(
        server, label_studio, asking_run, tmp_path):
    code, output = s4al("query", asking_run, "--device", "cpu", key=None)  # by hand: the package only
    assert code == 0, output
    package = asking_run / "queries" / "cycle_0"
    hand_made = label_studio.projects.create(title="ours", label_config=(package / "labelling_config.xml").read_text())
    made_before_run_ids = [{**t, "data": {k: v for k, v in t["data"].items() if k != "run_id"}}
                           for t in json.loads((package / "tasks.json").read_text())]  # as an older s4al wrote them
    label_studio.projects.import_tasks(id=hand_made.id, request=made_before_run_ids)
    first = project_tasks(label_studio, hand_made.id)[0]
    (prediction,) = label_studio.predictions.list(task=first.id)
    label_studio.annotations.create(id=first.id, result=prediction.result, was_cancelled=False)
    code, output = s4al("import", asking_run, export_project(label_studio, hand_made.id, tmp_path / "e.json"), key=None)
    assert code == 0, output
    projects_before = len(list(label_studio.projects.list()))

    query = ("query", asking_run, "--device", "cpu", "--label-studio", server.url)
    code, output = s4al(*query, key=server.token)
    assert code == 1 and "this run's answers came from a Label Studio project made by hand" in output, output
    code, output = s4al(*query, "--project", hand_made.id + 1000, key=server.token)
    assert code == 1 and f"no project {hand_made.id + 1000} there" in output, output
    assert len(list(label_studio.projects.list())) == projects_before and ledger_meta(asking_run) is None

    code, output = s4al(*query, "--project", hand_made.id, key=server.token)
    tasks_there = len(project_tasks(label_studio, hand_made.id))
    assert code == 0 and (f"sent 0 new tasks to Label Studio project {hand_made.id} (this run's from now on, "
                          f"{tasks_there - 1} of the package's tasks there already)") in output, output
    assert ledger_meta(asking_run) == {"url": server.url, "id": hand_made.id}
    assert len(list(label_studio.projects.list())) == projects_before
    second = project_tasks(label_studio, hand_made.id)[1]
    (prediction,) = label_studio.predictions.list(task=second.id)
    label_studio.annotations.create(id=second.id, result=prediction.result, was_cancelled=False)
    code, output = s4al("import", asking_run, "--label-studio", key=server.token)
    assert code == 0 and f"answered {len(second.data['region_ids'])} regions (label-studio)" in output, output


# ---- a person in a browser ------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
PAINTED = 3  # the class the person paints with: 'sidewalk'


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"no system Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def cli(*args):
    from typer.testing import CliRunner

    from s4al.cli import app

    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.output


def browser_run_config():
    from conftest import tiny_config

    return tiny_config(active={"annotator": "external", "cycles": 2, "final_cycle_epoch_multiplier": 1.0},
                       train={"epochs": 1, "iters_per_epoch": 1, "device": "cpu"}, ssl={"cold_start_epochs": 0})


class Annotator:
    """A person in Label Studio's editor: opens a task, paints a stroke with a class, submits."""

    def __init__(self, browser, server: Server):
        self.page = browser.new_page(viewport=VIEWPORT)
        self.page.goto(f"{server.url}/user/login/")
        self.page.fill("input[name=email]", server.email)
        self.page.fill("input[name=password]", server.password)
        self.page.click("button[type=submit]")
        self.page.wait_for_load_state("networkidle")
        self.url = server.url

    def open(self, project_id: int, task_id: int) -> dict:
        """Opens the task; returns the image's box on the screen (x, y, width, height)."""
        self.page.goto(f"{self.url}/projects/{project_id}/data?task={task_id}")
        image = self.page.locator("canvas").first
        image.wait_for(timeout=60_000)
        self.page.wait_for_timeout(2000)  # the regions' masks are drawn after the image
        return self.page.locator(".konvajs-content").first.bounding_box()

    def paint_row(self, screen: dict, image_shape, class_name: str, row: int, x0: int, x1: int) -> None:
        """Selects the person's region of `class_name` in the Regions list and paints along image
        row `row` from column x0 to x1; the region stays selected."""
        height, width = image_shape
        item = self.page.locator(".lsf-outliner-item").filter(has=self.page.get_by_text(class_name, exact=True))
        item.first.click()
        y = screen["y"] + (row + 0.5) * screen["height"] / height
        xs = [screen["x"] + (x + 0.5) * screen["width"] / width for x in range(x0, x1)]
        self.page.mouse.move(xs[0], y)
        self.page.mouse.down()
        for x in xs[1:]:
            self.page.mouse.move(x, y)
        self.page.mouse.up()
        self.page.wait_for_timeout(500)

    def deselect(self) -> None:
        self.page.keyboard.press("Escape")
        self.page.wait_for_timeout(500)

    def submit(self) -> None:
        """Submits and waits for the server to store the annotation (leaving the page sooner loses it)."""
        def stored(response) -> bool:
            return response.request.method == "POST" and "/annotations" in response.url and response.ok

        with self.page.expect_response(stored, timeout=60_000):
            self.page.get_by_role("button", name="Submit").click()

    def screen_pixel(self, screen: dict, image_shape, y: int, x: int, path: Path) -> np.ndarray:
        """The colour on the screen at image pixel (y, x); the screenshot is kept at `path`."""
        from PIL import Image

        self.page.screenshot(path=str(path))
        height, width = image_shape
        shown = np.asarray(Image.open(path).convert("RGB")).astype(int)
        return shown[int(screen["y"] + (y + 0.5) * screen["height"] / height),
                     int(screen["x"] + (x + 0.5) * screen["width"] / width)]


def export_project(label_studio, project_id, path: Path) -> Path:
    path.write_bytes(b"".join(label_studio.projects.exports.download_sync(
        id=project_id, export_type="JSON", download_all_tasks=True)))
    return path


def model_labels(task_json: dict, height: int, width: int) -> np.ndarray:
    """The model's pre-painted class map of a task, by Label Studio's own RLE decoder (255: none)."""
    labels = np.full((height, width), 255, np.uint8)
    for result in task_json["predictions"][0]["result"]:
        if result["from_name"] == "model":
            labels[decoded_mask(result)] = SYNTHETIC_NAMES.index(result["value"]["brushlabels"][0])
    return labels


def decoded_mask(result: dict) -> np.ndarray:
    from label_studio_sdk.converter.brush import decode_rle

    rgba = decode_rle(result["value"]["rle"]).reshape(result["original_height"], result["original_width"], 4)
    return rgba[..., 3] > 0


SYNTHETIC_NAMES = ("sky", "building", "road", "sidewalk", "tree", "car", "pole", "sign", "pedestrian")


def label_one_task(person, label_studio, project_id, tasks_path: Path, shots: Path) -> dict:
    """The person opens the first task of `tasks_path` in the project, paints a row of its first region
    with PAINTED, accepts the model's paint in its second, and submits. Returns what the test checks:
    the task's data, the model's labels, the region and row painted, the screen box of the image, and
    the screen colour at the stroke before painting, while painting, deselected and reopened."""
    sent = json.loads(tasks_path.read_text())[0]
    data = sent["data"]
    (stored,) = [t for t in label_studio.tasks.list(project=project_id, fields="all")
                 if t.data["image_id"] == data["image_id"] and t.data.get("cycle") == data["cycle"]]
    with Ledger(tasks_path.parents[2] / "ledger.sqlite", readonly=True) as ledger:
        region = region_by_id(ledger, data["region_ids"][0])
        shape = ledger.image_size(data["image_id"])
    y0, x0, y1, x1 = region.box
    row, column = (y0 + y1) // 2, (x0 + x1) // 2
    screen = person.open(project_id, stored.id)
    colours = {"before": person.screen_pixel(screen, shape, row, column, shots / "before.png")}
    person.paint_row(screen, shape, SYNTHETIC_NAMES[PAINTED], row, x0 + 2, x1 - 2)
    colours["painting"] = person.screen_pixel(screen, shape, row, column, shots / "painting.png")
    person.deselect()
    colours["deselected"] = person.screen_pixel(screen, shape, row, column, shots / "deselected.png")
    person.submit()
    reopened = person.open(project_id, stored.id)
    colours["reopened"] = person.screen_pixel(reopened, shape, row, column, shots / "reopened.png")
    return {"data": data, "model": model_labels(sent, *shape), "region": region, "row": row, "screen": screen,
            "colours": colours}


def test_a_person_labels_two_cycles_in_one_label_studio_project_in_a_browser(
        server, label_studio, browser, tmp_path):
    from s4al.active.cycle import ActiveLearningRun
    from s4al.data.synthetic import SYNTHETIC_CLASSES

    assert SYNTHETIC_CLASSES.names == SYNTHETIC_NAMES
    run = tmp_path / "run"
    ActiveLearningRun(run, browser_run_config()).run()  # cycle 0 trains and asks
    cli("query", run, "--device", "cpu")
    queries = run / "queries"
    project = label_studio.projects.create(title="one project, every cycle",
                                           label_config=(queries / "cycle_0" / "labelling_config.xml").read_text())
    label_studio.projects.import_tasks(id=project.id, request=json.loads((queries / "cycle_0" / "tasks.json").read_text()))
    person = Annotator(browser, server)

    painted = []
    for cycle in (0, 1):
        if cycle == 1:
            label_studio.projects.import_tasks(id=project.id,
                                               request=json.loads((queries / "cycle_1" / "tasks.json").read_text()))
        shots = tmp_path / f"cycle_{cycle}"
        shots.mkdir()
        labelled = label_one_task(person, label_studio, project.id, queries / f"cycle_{cycle}" / "tasks.json", shots)
        painted.append(labelled)
        screen, colours = labelled["screen"], labelled["colours"]
        # the whole image shows when the task opens, above the buttons
        assert screen["x"] >= 0 and screen["y"] >= 0 and screen["y"] + screen["height"] <= VIEWPORT["height"] - 50
        # the person's paint stays on top of the model's: deselected, the stroke shows as while painting
        # (Label Studio draws the selected region on top); reopened, Label Studio draws the stored mask
        # a little fainter, but a region drawn under the model's (60% opaque) paint would move the
        # colour from the model's at most 40% of the way towards the painted one
        assert np.abs(colours["painting"] - colours["before"]).sum() > 30
        assert np.abs(colours["deselected"] - colours["painting"]).max() <= 3, colours
        change = colours["painting"] - colours["before"]
        assert np.dot(colours["reopened"] - colours["before"], change) / np.dot(change, change) > 0.5, colours

        output = cli("import", run, export_project(label_studio, project.id, tmp_path / f"export_{cycle}.json"))
        assert "answered 2 regions (label-studio)" in output
        assert ("1 task already imported" in output) == (cycle == 1)
        resumed = cli("run", "--resume", run)
        assert "s4al skip" in resumed and "asked, waiting for answers" in resumed
        assert "skipped " in cli("skip", run)
        cli("run", "--resume", run)
        if cycle == 0:
            cli("query", run, "--device", "cpu")

    with Ledger(run / "ledger.sqlite", readonly=True) as ledger:
        answered = ledger.answered()
        assert len(answered) == 4 and {r.cycle for r in answered} == {0, 1}
        for labelled in painted:
            model, row = labelled["model"], labelled["row"]
            first, second = (region_by_id(ledger, region_id) for region_id in labelled["data"]["region_ids"])
            y0, x0, y1, x1 = first.box
            patch = ledger.patch(first)
            assert (patch[row - y0, 3:x1 - x0 - 3] == PAINTED).all()  # the stroke
            untouched = [r for r in range(y1 - y0) if abs(r - (row - y0)) > 2]
            assert untouched and np.array_equal(patch[untouched], model[y0:y1, x0:x1][untouched])
            sy0, sx0, sy1, sx1 = second.box
            assert np.array_equal(ledger.patch(second), model[sy0:sy1, sx0:sx1])  # accepted as painted
        initial = sum(r.height * r.width for r in ledger.images() if r.initial)
        assert label_state(ledger).labelled_pixels == initial + sum(r.shape[0] * r.shape[1] for r in answered)
