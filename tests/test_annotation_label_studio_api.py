"""The client side of the run's Label Studio project, without Label Studio: uploads split by size,
what is refused before anything is sent, and uploads to a small stand-in server that stores a batch
and then fails (the tests with Label Studio itself are in test_annotation_label_studio_server.py)."""

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from typer.testing import CliRunner

from s4al.active.ledger import Ledger
from s4al.annotation import label_studio_api
from s4al.annotation.label_studio_api import (
    PROJECT_META, LabelStudioError, batches_by_size, download_export, project_on, send_query,
)
from s4al.cli import app


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """The stand-in servers are on this machine: no proxy from the environment in between."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_uploads_are_split_into_consecutive_batches_within_the_limit_a_larger_task_alone():
    def by_length(items):
        return list(batches_by_size(items, len, limit=100))

    assert by_length(["a" * 40, "b" * 30, "c" * 30, "d" * 120, "e" * 10, "f" * 90]) == [
        ["a" * 40, "b" * 30, "c" * 30], ["d" * 120], ["e" * 10, "f" * 90]]
    assert by_length(["a" * 150, "b" * 10, "c" * 90, "d" * 6]) == [["a" * 150], ["b" * 10, "c" * 90], ["d" * 6]]
    assert by_length([]) == []


def test_batches_are_made_as_the_items_arrive():
    drawn = []

    def items():
        for k in range(6):
            drawn.append(k)
            yield "x" * 40

    batches = batches_by_size(items(), len, limit=100)
    assert next(batches) == ["x" * 40] * 2 and drawn == [0, 1, 2]  # the third item closed the first batch


def test_query_refuses_a_server_that_is_no_address_or_no_key_before_reading_the_run(tmp_path):
    result = CliRunner().invoke(app, ["query", str(tmp_path), "--label-studio", "localhost:8080"],
                                env={"LABEL_STUDIO_API_KEY": "key"})
    assert (result.exit_code, result.output) == (
        1, "error: localhost:8080: not a server address (expected http://HOST:PORT or https://...)\n")
    result = CliRunner().invoke(app, ["query", str(tmp_path), "--label-studio", "http://localhost:8080"],
                                env={"LABEL_STUDIO_API_KEY": None})
    assert result.exit_code == 1 and result.output.startswith(
        "error: http://localhost:8080: no API key; set LABEL_STUDIO_API_KEY (or give --api-key)")


def test_a_run_whose_project_is_on_another_server_is_refused_naming_both_ways_on(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.set_meta(PROJECT_META, {"url": "http://old:8080", "id": 4})
        with pytest.raises(LabelStudioError) as refused:
            project_on(ledger, "http://new:8080")
    assert str(refused.value) == (
        "http://new:8080: this run's tasks go to its project on http://old:8080 (http://old:8080/projects/4); "
        "query with --label-studio http://old:8080; where that server moved here with its projects: "
        f"s4al query {tmp_path} --label-studio http://new:8080 --project 4; or to send the tasks to a new project: "
        f"s4al query {tmp_path} --label-studio http://new:8080 --new-project")
    with Ledger(tmp_path / "ledger.sqlite") as ledger, pytest.raises(LabelStudioError) as refused:
        project_on(ledger, "http://old:8080/projects/4/data")  # the page s4al names, pasted
    assert str(refused.value) == ("http://old:8080/projects/4/data: the address of a Label Studio page; give the "
                                  "server's, http://old:8080")


def test_this_machine_under_another_name_is_the_same_server_and_another_port_is_not(tmp_path):
    project = {"url": "http://127.0.0.1:8080", "id": 4}
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.set_meta(PROJECT_META, project)
        for same in ("http://localhost:8080", "http://[::1]:8080", "http://127.0.0.1:8080"):
            assert project_on(ledger, same).id == 4
        for other in ("http://localhost:8081", "https://localhost:8080", "http://10.0.0.1:8080"):
            with pytest.raises(LabelStudioError, match="this run's tasks go to its project on http://127.0.0.1:8080"):
                project_on(ledger, other)


def test_new_project_without_a_server_is_refused_before_reading_the_run(tmp_path):
    result = CliRunner().invoke(app, ["query", str(tmp_path), "--new-project"], env={"LABEL_STUDIO_API_KEY": "key"})
    assert result.exit_code == 2
    assert "--new-project makes a new Label Studio project: give --label-studio URL too" in result.output


class StoresThenFails(BaseHTTPRequestHandler):
    """Label Studio's project, task-list and import endpoints; an import is stored, then answered
    as `failure` says: a proxy's 504, or the connection closed without an answer."""

    failure = "504"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, code: int, body: bytes, kind: str = "application/json"):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/api/projects/":  # asked first, without a key
            return self._answer(401, json.dumps({"detail": "Authentication credentials were not provided."}).encode())
        self.server.keys.append(self.headers.get("Authorization"))
        if self.path.startswith("/api/tasks"):
            return self._answer(200, json.dumps({"tasks": [], "total": 0}).encode())
        self._answer(200, json.dumps({"id": 1, "title": "run"}).encode())

    def _took_upload(self) -> bool:
        """Answers a project's creation, or stores an upload's tasks: True for an upload, which the
        caller answers."""
        self.server.keys.append(self.headers.get("Authorization"))
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/api/projects/":
            self._answer(201, json.dumps({"id": 1, "title": "run"}).encode())
            return False
        self.server.uploads.append(json.loads(body))
        return True

    def do_POST(self):
        if not self._took_upload():
            return
        if self.failure == "504":
            return self._answer(504, b"<html>504 Gateway Time-out</html>", "text/html")
        self.close_connection = True  # no answer at all


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[tuple[ThreadingHTTPServer, str]]:
    """A stand-in server answering with `handler` on a free local port, and its address."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.uploads, server.keys, server.refused = [], [], 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def query_package(folder: Path, tasks: list[dict], config: str = "<View/>") -> Path:
    """A query package's two files the sending reads: the labelling config and tasks.json."""
    folder.mkdir(exist_ok=True)
    (folder / "labelling_config.xml").write_text(config)
    (folder / "tasks.json").write_text(json.dumps(tasks))
    return folder


@pytest.mark.parametrize("failure", ["504", "closed"])
def test_a_failed_upload_is_sent_once_and_the_error_says_the_same_query_sends_what_is_missing(failure, tmp_path):
    package = query_package(tmp_path / "queries", [{"data": {"cycle": 0, "region_ids": [k]}} for k in range(3)])
    with serving(type("Handler", (StoresThenFails,), {"failure": failure})) as (server, url), \
            Ledger(tmp_path / "ledger.sqlite") as ledger, pytest.raises(LabelStudioError) as failed:
        send_query(ledger, "run", package, url, "token-123\n")  # pasted with its line's end
    assert len(server.uploads) == 1 and len(server.uploads[0]) == 3  # stored once: no retry of the upload
    assert set(server.keys) == {"Token token-123"}
    expected = "no answer in time to the upload of tasks 1-3 of 3 new to project 1 (HTTP 504" if failure == "504" else (
        "no answer to the upload of tasks 1-3 of 3 new to project 1")
    assert "the server may still be storing them: wait until it is idle" in str(failed.value)
    assert expected in str(failed.value)
    assert str(failed.value).endswith(f"`s4al query {tmp_path} --label-studio {url}` again sends only the tasks it lacks")


def test_a_key_with_a_space_or_control_character_is_refused_without_showing_it(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger, pytest.raises(LabelStudioError) as refused:
        send_query(ledger, "run", tmp_path, "http://127.0.0.1:9", "secret\rkey")
    assert "the API key holds a space, a control character or a non-ASCII one" in str(refused.value)
    assert "secret" not in str(refused.value)
    with pytest.raises(LabelStudioError, match="not a server address"):
        send_query(None, "run", tmp_path, "http://127.0.0.1:notaport", "key")


def test_an_expired_personal_access_token_is_refused_as_expired_without_showing_it(tmp_path):
    import jwt  # label-studio-sdk's own dependency

    expired = jwt.encode({"token_type": "refresh", "exp": 1_700_000_000, "user_id": 1}, "s" * 32, algorithm="HS256")
    with serving(StoresThenFails) as (server, url), Ledger(tmp_path / "ledger.sqlite") as ledger, \
            pytest.raises(LabelStudioError) as refused:
        send_query(ledger, "run", tmp_path, url, expired)
    assert str(refused.value).startswith(f"{url}: the API key was refused (HTTP 401: API key has expired")
    assert "a personal access token that expired or was revoked needs a new one" in str(refused.value)
    assert expired not in str(refused.value) and not server.keys and not server.uploads


class Silent(StoresThenFails):
    def do_GET(self):
        if self.path != "/api/projects/":
            threading.Event().wait(3)  # longer than the client waits below
        try:
            super().do_GET()
        except ConnectionError:  # the client has gone
            pass


def test_a_server_that_does_not_answer_in_time_is_named_so_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(label_studio_api, "LabelStudio", partial(LabelStudio, timeout=0.5))
    with serving(Silent) as (server, url), pytest.raises(LabelStudioError) as late:
        with Ledger(tmp_path / "ledger.sqlite") as ledger:
            ledger.set_meta(PROJECT_META, {"url": url, "id": 1})
        download_export(tmp_path, "key")
    assert str(late.value).startswith(f"{url}: Label Studio did not answer in time; a busy server, or the export")
    assert not list((tmp_path / "answers").glob("*"))


class LimitsUploads(StoresThenFails):
    """A proxy in front of Label Studio that refuses bodies over 300 bytes (HTTP 413), storing nothing."""

    def do_POST(self):
        if self.path != "/api/projects/" and int(self.headers.get("Content-Length", 0)) > 300:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.server.refused += 1
            return self._answer(413, b"<html>413 Request Entity Too Large</html>", "text/html")
        if self._took_upload():
            self._answer(201, json.dumps({"task_count": len(self.server.uploads[-1])}).encode())


def test_an_upload_over_a_proxys_limit_goes_in_halves_and_a_task_over_it_is_named(tmp_path):
    tasks = [{"data": {"cycle": 0, "region_ids": [k], "image": "x" * 40}} for k in range(5)]  # 446 bytes in all
    package = query_package(tmp_path / "queries", tasks)
    with serving(LimitsUploads) as (server, url), Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert send_query(ledger, "run", package, url, "key").sent == 5
        assert [len(upload) for upload in server.uploads] == [2, 3] and server.refused == 1
        assert [t["data"]["region_ids"] for upload in server.uploads for t in upload] == [[k] for k in range(5)]
        query_package(package, [{"data": {"cycle": 1, "region_ids": [9], "image": "x" * 400}}])
        with pytest.raises(LabelStudioError, match=r"tasks 1-1 of 1 new \(HTTP 413.*one task is over the server's "
                                                   r"upload limit: raise it"):
            send_query(ledger, "run", package, url, "key")


class StoresInTheBackground(StoresThenFails):
    """Label Studio Enterprise: an upload is answered with an import id at once and stored later; the
    import's status says `in_progress` twice, then `outcome` (`completed`, `failed`, or never done)."""

    outcome = "completed"

    def do_POST(self):
        if self._took_upload():
            self._answer(201, json.dumps({"import": 40 + len(self.server.uploads)}).encode())

    def do_GET(self):
        if "/imports/" in self.path:
            self.server.polls.append(self.path)
            done = self.outcome != "never" and len(self.server.polls) > 2
            state = {"id": 41, "status": self.outcome if done else "in_progress"}
            if state["status"] == "failed":
                state["error"] = "Data keys are not the same as the labeling config's"
            return self._answer(200, json.dumps(state).encode())
        super().do_GET()


@pytest.mark.parametrize("outcome", ["completed", "failed", "never"])
def test_an_upload_stored_in_the_background_is_waited_for_and_its_failure_reported(tmp_path, monkeypatch, outcome):
    monkeypatch.setattr(label_studio_api, "BACKGROUND_WAIT_SECONDS", 1.0 if outcome == "never" else 60.0)
    package = query_package(tmp_path / "queries", [{"data": {"cycle": 0, "region_ids": [k]}} for k in range(3)])
    handler = type("Handler", (StoresInTheBackground,), {"outcome": outcome})
    with serving(handler) as (server, url), Ledger(tmp_path / "ledger.sqlite") as ledger:
        server.polls = []
        if outcome == "completed":
            assert send_query(ledger, "run", package, url, "key").sent == 3
            assert server.polls == ["/api/projects/1/imports/41/"] * 3
            return
        with pytest.raises(LabelStudioError) as failed:
            send_query(ledger, "run", package, url, "key")
    rerun = f"the tasks sent before are in the project; `s4al query {tmp_path} --label-studio {url}` again"
    if outcome == "failed":
        assert str(failed.value).startswith(f"{url}: project 1 failed to store tasks 1-3 of 3 new (import 41: Data "
                                            "keys are not the same as the labeling config's); " + rerun)
    else:
        assert str(failed.value).startswith(f"{url}: project 1 is still storing tasks 1-3 of 3 new (import 41, "
                                            "in_progress) after 1 s; wait until it has, then " + rerun)
        assert len(server.polls) == 2  # at 0, 0.5 s; the next pause would pass the second


class ExportsInTheBackground(StoresThenFails):
    """Label Studio whose project's export snapshots are built in the background: `in_progress`
    twice, then `outcome` (`completed`: the export holds one task; `failed`; or never done)."""

    outcome = "completed"

    def do_POST(self):
        self.server.keys.append(self.headers.get("Authorization"))
        self.server.created.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
        self._answer(201, json.dumps({"id": 8, "status": "created"}).encode())

    def do_GET(self):
        if self.path.startswith("/api/projects/1/exports/8/download"):
            self.server.downloads.append(self.path)
            return self._answer(200, json.dumps([{"id": 70, "data": {}}]).encode())
        if self.path.startswith("/api/projects/1/exports/8"):
            self.server.polls.append(self.path)
            done = len(self.server.polls) > 2 and self.outcome != "never"
            return self._answer(200, json.dumps({"id": 8, "status": self.outcome if done else "in_progress"}).encode())
        super().do_GET()

    def do_DELETE(self):
        self.server.deleted.append(self.path)
        self._answer(204, b"")


@pytest.mark.parametrize("outcome", ["completed", "failed", "never"])
def test_an_export_is_a_snapshot_waited_for_received_whole_and_deleted_on_the_server(tmp_path, monkeypatch, outcome):
    monkeypatch.setattr(label_studio_api, "BACKGROUND_WAIT_SECONDS", 1.0 if outcome == "never" else 60.0)
    run_dir = tmp_path
    with serving(type("Handler", (ExportsInTheBackground,), {"outcome": outcome})) as (server, url):
        server.polls, server.created, server.deleted, server.downloads = [], [], [], []
        with Ledger(run_dir / "ledger.sqlite") as ledger:
            ledger.set_meta(PROJECT_META, {"url": url, "id": 1})
        if outcome == "completed":
            export = download_export(run_dir, "key")
            assert json.loads(export.read_text()) == [{"id": 70, "data": {}}]
            assert server.downloads == ["/api/projects/1/exports/8/download"]  # as built: no conversion asked
        else:
            with pytest.raises(LabelStudioError) as failed:
                download_export(run_dir, "key")
    assert server.created[0]["task_filter_options"] == {"only_with_annotations": False}  # every task
    assert server.created[0]["annotation_filter_options"] == {"usual": True, "ground_truth": True, "skipped": True}
    if outcome == "never":  # left to finish, not deleted under the job that writes its file
        assert str(failed.value) == (f"{url}: project 1's export 8 is not built after 1 s (status in_progress): "
                                     "export the project in Label Studio (JSON) and import that file")
        assert len(server.polls) == 2 and not server.deleted
        return
    if outcome == "failed":
        assert str(failed.value).startswith(f"{url}: project 1's export 8 failed; try again, or export the project")
    assert len(server.polls) == 3 and server.deleted == ["/api/projects/1/exports/8"]
    assert [p.name for p in (run_dir / "answers").iterdir()] == ([export.name] if outcome == "completed" else [])


def test_an_imported_download_removes_its_projects_earlier_ones_and_no_other_projects(tmp_path):
    """A download of a project replaced since (by query --new-project) may never have been imported:
    it stays."""
    answers = tmp_path / "answers"
    answers.mkdir()
    tag = label_studio_api._tag(label_studio_api.Project("http://ls:8080", 3))
    assert re.fullmatch(r"project3-[0-9a-f]{8}", tag)
    assert tag != label_studio_api._tag(label_studio_api.Project("http://other:8080", 3))  # project 3 of another server
    names = [f"label_studio_20261201T070000000000Z_{tag}.json", f"label_studio_20261202T070000000000Z_{tag}.json",
             "label_studio_20261130T070000000000Z_project2-0a1b2c3d.json",  # the project replaced
             "label_studio_20261129T070000000000Z.json", "mine.json"]  # one of an earlier s4al; the user's own
    later = answers / f"label_studio_20261203T070000000000Z_{tag}.json"
    for name in [*names, later.name]:
        (answers / name).write_text("[]")
    assert label_studio_api.remove_earlier_downloads(later) == 2
    assert sorted(p.name for p in answers.iterdir()) == sorted([*names[2:], later.name])


class ProxyGivesUpOnExports(ExportsInTheBackground):
    """A proxy in front of Label Studio that answers 504 when the export's creation takes long."""

    def do_POST(self):
        self._answer(504, b"<html>504 Gateway Time-out</html>", "text/html")


def test_a_proxy_that_gives_up_on_an_export_is_named_so_with_what_to_do(tmp_path):
    with serving(ProxyGivesUpOnExports) as (server, url), pytest.raises(LabelStudioError) as late:
        with Ledger(tmp_path / "ledger.sqlite") as ledger:
            ledger.set_meta(PROJECT_META, {"url": url, "id": 1})
        download_export(tmp_path, "key")
    assert str(late.value) == (f"{url}: Label Studio did not answer in time (HTTP 504); a busy server, or the export "
                               "of a large project, can take longer: try again later, or export the project in Label "
                               "Studio (JSON) and import that file")
    assert not list((tmp_path / "answers").glob("*"))


class NotLabelStudio(StoresThenFails):
    """A web server that answers pages, as a Label Studio page's address (…/projects/1) would."""

    def do_GET(self):
        self._answer(404, b"<!DOCTYPE html><html>Not Found</html>", "text/html")


def test_the_address_of_a_page_or_another_server_is_refused_as_no_label_studio(tmp_path):
    with serving(NotLabelStudio) as (server, address), Ledger(tmp_path / "ledger.sqlite") as ledger:
        for url, said in (
            (f"{address}/projects/1", f"the address of a Label Studio page; give the server's, {address}"),
            (f"{address}/ls/projects/12/data?tab=3", f"the address of a Label Studio page; give the server's, "
                                                     f"{address}/ls"),
            (f"{address}/other", f"not the address of a Label Studio server (HTTP 404 without JSON at "
                                 f"{address}/other/api/projects/); give the address Label Studio is served at, as "
                                 "http://HOST:PORT"),
        ):
            with pytest.raises(LabelStudioError) as refused:
                send_query(ledger, "run", tmp_path, url, "key")
            assert str(refused.value) == f"{url}: {said}"


class HoldsAProject(LimitsUploads):
    """Label Studio with the run's project, its labelling config as `config` says."""

    config = ""

    def do_GET(self):
        if self.path.startswith("/api/projects/1"):
            return self._answer(200, json.dumps({"id": 1, "title": "run", "label_config": self.config}).encode())
        super().do_GET()


def labelling(*labels: str) -> str:
    values = "".join(f'<Label value="{label}" background="#ff0000"/>' for label in labels)
    return f'<View><Image name="image" value="$image"/><BrushLabels name="b" toName="image">{values}</BrushLabels></View>'


@pytest.mark.parametrize("in_project, edited", [(("road", "car"), False), (("road", "vehicle"), True)])
def test_a_project_whose_labels_were_edited_in_label_studio_is_noticed_when_tasks_are_sent(tmp_path, in_project, edited):
    handler = type("Handler", (HoldsAProject,), {"config": labelling(*in_project).replace("#ff0000", "#00ff00")})
    package = query_package(tmp_path / "queries", [{"data": {"cycle": 0, "region_ids": [1]}}],
                            labelling("road", "car"))  # a colour changed is no edit
    with serving(handler) as (server, url), Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.set_meta(PROJECT_META, {"url": url, "id": 1})
        assert send_query(ledger, "run", package, url, "key").labels_edited is edited


class Redirects(StoresThenFails):
    def do_GET(self):
        if self.path.startswith("/ls/"):
            return self._answer(401, json.dumps({"detail": "no key"}).encode())
        self.send_response(301)
        self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/ls{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_server_that_redirects_is_refused_naming_where_it_redirects(tmp_path):
    with serving(Redirects) as (server, url), Ledger(tmp_path / "ledger.sqlite") as ledger, \
            pytest.raises(LabelStudioError) as refused:
        send_query(ledger, "run", tmp_path, url, "key")
    assert str(refused.value) == f"{url}: redirects to {url}/ls; give that address"


def test_an_upload_to_a_server_gone_says_nothing_was_sent():
    closed = "http://127.0.0.1:9"  # nothing listens there
    client = LabelStudio(base_url=f"{closed}/", api_key="key")
    with pytest.raises(LabelStudioError) as failed:
        label_studio_api._send(client, label_studio_api.Project(closed, 1), [{"data": {"cycle": 0, "region_ids": [1]}}],
                               first=4, count=6, rerun="RERUN", limit=[label_studio_api.UPLOAD_BYTES])
    assert str(failed.value).startswith(f"{closed}: Label Studio server unreachable (")
    assert str(failed.value).endswith("); tasks 4-4 of 6 new were not sent; RERUN")


def answered_from_an_export(ledger: Ledger) -> None:
    """One region of image 'a' asked and answered from a Label Studio export (a project made by hand)."""
    ledger.set_meta("classes", ["road", "car"])
    ledger.register_images([("a", 8, 8)])
    (region_id,) = ledger.ask(0, [("a", (0, 0, 4, 4), "entropy", 1.0)])
    ledger.answer(region_id, np.zeros((4, 4), np.uint8), by="label-studio")


def test_a_run_answered_from_a_hand_made_project_is_refused_a_new_project_unasked(tmp_path):
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert project_on(ledger, "http://ls:8080") is None
        answered_from_an_export(ledger)
        with pytest.raises(LabelStudioError) as refused:
            project_on(ledger, "http://ls:8080")
    assert str(refused.value) == (
        f"{tmp_path}: this run's answers came from a Label Studio project made by hand; to send the tasks to it (not "
        f"again those it holds): s4al query {tmp_path} --label-studio URL --project ID, its id in its address "
        f"(URL/projects/ID); to send the tasks to a new project: s4al query {tmp_path} --label-studio "
        "http://ls:8080 --new-project (its tasks still asked are sent there too)")


class HoldsProjectSeven(HoldsAProject):
    """Label Studio whose one project is 7 (made by hand), holding the task asking region 1."""

    def do_GET(self):
        if self.path.startswith("/api/projects/7"):
            return self._answer(200, json.dumps({"id": 7, "title": "by hand", "label_config": "<View/>"}).encode())
        if self.path.startswith("/api/projects/") and self.path != "/api/projects/":
            return self._answer(404, json.dumps({"detail": "Not found."}).encode())
        if self.path.startswith("/api/tasks"):
            self.server.keys.append(self.headers.get("Authorization"))
            held = [{"id": 70, "data": {"cycle": 0, "region_ids": [1]}}] if "page=1&" in self.path + "&" else []
            return self._answer(200, json.dumps({"tasks": held, "total": 1}).encode())
        super().do_GET()


def test_a_hand_made_project_named_by_id_becomes_the_runs_and_gets_only_the_tasks_it_lacks(tmp_path):
    package = query_package(tmp_path / "queries", [{"data": {"cycle": 0, "region_ids": [k]}} for k in (1, 2)])
    with serving(HoldsProjectSeven) as (server, url), Ledger(tmp_path / "ledger.sqlite") as ledger:
        answered_from_an_export(ledger)
        with pytest.raises(LabelStudioError) as refused:
            send_query(ledger, "run", package, url, "key", project_id=9)
        assert str(refused.value) == (f"{url}: no project 9 there (--project takes the number in a project's "
                                      f"address, {url}/projects/ID)")
        assert ledger.get_meta(PROJECT_META) is None and not server.uploads
        sent = send_query(ledger, "run", package, url, "key", project_id=7)
        assert (sent.project.id, sent.adopted, sent.created, sent.sent, sent.already) == (7, True, False, 1, 1)
        assert [t["data"]["region_ids"] for upload in server.uploads for t in upload] == [[2]]
        assert ledger.get_meta(PROJECT_META) == {"url": url, "id": 7}
        assert project_on(ledger, url).id == 7  # later queries go there without --project
        again = send_query(ledger, "run", package, url.replace("127.0.0.1", "localhost"), "key", project_id=7)
        assert again.replaced is None  # the run's own project, its server named otherwise: nothing replaced


def test_project_needs_a_server_and_is_not_a_new_project(tmp_path):
    for args in (["--project", "7"], ["--label-studio", "http://ls:8080", "--project", "7", "--new-project"]):
        result = CliRunner().invoke(app, ["query", str(tmp_path), *args], env={"LABEL_STUDIO_API_KEY": "key"})
        assert result.exit_code == 2 and "--project names a Label Studio project to send to" in result.output
