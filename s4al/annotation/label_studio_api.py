"""The run's one Label Studio project, through Label Studio's API (label-studio-sdk's client).

`s4al query RUN --label-studio URL` sends the tasks of the query package to the project; the first
time it creates the project and records its server and id in the ledger (meta PROJECT_META), so
every later cycle goes to the same project. A task whose regions the project already holds (same
cycle, a shared region id) is not sent again, so a query repeated, or killed halfway and run again,
sends each region once. tasks.json, an image in each task, is read one task at a time and sent in
uploads of at most UPLOAD_BYTES, so memory does not grow with the pool. `s4al import RUN
--label-studio` downloads the project's full JSON export into RUN/answers/ and imports that file.
A project deleted on its server, or a run moved to another server: `--new-project` makes a new
project there, records it in place of the old one and sends it every task of the package (the
regions still asked; answers already imported stay in the ledger). A project made by hand, whose
tasks.json imports gave earlier answers: `--project ID` makes it the run's, and only the tasks it
lacks are sent (a run with such answers and no recorded project is refused a new project unasked).

The API key is the caller's (LABEL_STUDIO_API_KEY or --api-key) and is never stored. What the
server refuses, or a server that does not answer, is a LabelStudioError naming the server."""

from __future__ import annotations

import gc
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit
from xml.etree import ElementTree

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.data_manager import Column, Filters, Operator, Type

from s4al.active.ledger import PROJECT_META, RUN_ID, Ledger, utc_now
from s4al.annotation.label_studio import BY_LABEL_STUDIO, json_list_items
from s4al.atomic import atomic_write
from s4al.errors import S4alError
from s4al.text import shell
from s4al.run_folder import RunFolder

UPLOAD_BYTES = 50 * 2**20  # the JSON of one upload; Label Studio refuses uploads over 250 MB
LISTED_PAGE_TASKS = 10  # tasks per page when listing a project's tasks, each with its image
T = TypeVar("T")
SHOWN_BODY_CHARS = 200  # of a refusal's body, in its message
# An upload and an export, which the server answers only when it has stored the tasks or built the
# whole export; other requests keep the client's 60 s.
SLOW_REQUEST = {"timeout": 600.0}
# What creates something is sent once: the client retries a failed request twice by default, and a
# server that stored an upload but answered late (a proxy's 504, a dropped connection) got it three times.
ONCE = {"max_retries": 0}
# For what the server does in the background: an upload stored (Label Studio Enterprise), an export built.
BACKGROUND_WAIT_SECONDS = 600.0


class LabelStudioError(S4alError):
    """The Label Studio server did not answer, or refused a request."""


LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class Project:
    url: str  # the server, without a trailing slash
    id: int

    @property
    def page(self) -> str:
        """Where the annotators open the project."""
        return f"{self.url}/projects/{self.id}"


@dataclass(frozen=True)
class SentTasks:
    project: Project
    created: bool  # the project was made by this query
    replaced: Project | None  # the run's project before this query made a new one in its place
    sent: int  # tasks uploaded now
    already: int  # tasks of the package the project held before
    repeated: tuple[int, ...]  # ids of the project's tasks asking regions an earlier task of it asks too
    labels_edited: bool = False  # the project's labelling config names other labels than the package's
    adopted: bool = False  # an existing project, named by the caller, became the run's


def batches_by_size(items: Iterable[T], size: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """Consecutive runs of `items` whose sizes add up to at most `limit`, each made as the items
    arrive; an item larger than `limit` goes alone."""
    batch, total = [], 0
    for item in items:
        item_size = size(item)
        if batch and total + item_size > limit:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += item_size
    if batch:
        yield batch


def recorded_project(ledger: Ledger) -> Project | None:
    """The run's project, if a query has sent tasks to one."""
    meta = ledger.get_meta(PROJECT_META)
    return None if meta is None else Project(meta["url"], meta["id"])


def project_on(ledger: Ledger, url: str) -> Project | None:
    """The run's project, if it has one, which must be on server `url` (no trailing slash). A run
    without one whose answers came from a Label Studio export has a project made by hand: it is
    refused, as a project made now would get that one's tasks still asked a second time."""
    project = recorded_project(ledger)
    if project is not None and not _same_server(project.url, url):
        server = _server_of_page(url)
        if server is not None and _same_server(project.url, server):
            raise _page_address(url, server)
        raise LabelStudioError(f"{url}: this run's tasks go to its project on {project.url} ({project.page}); "
                               f"query with --label-studio {project.url}; where that server moved here with its "
                               f"projects: s4al query {shell(ledger.run_dir)} --label-studio {url} --project "
                               f"{project.id}; or {_new_project_way(ledger.run_dir, url)}")
    if project is None and any(region.answered_by == BY_LABEL_STUDIO for region in ledger.answered()):
        raise LabelStudioError(
            f"{ledger.run_dir}: this run's answers came from a Label Studio project made by hand; to send the tasks "
            f"to it (not again those it holds): s4al query {shell(ledger.run_dir)} --label-studio URL --project ID, "
            f"its id in its address (URL/projects/ID); {_new_project_way(ledger.run_dir, url)} (its tasks still asked "
            "are sent there too)")
    return project


def _server_of_page(url: str) -> str | None:
    """The server address of `url` if it reads as the address of a Label Studio page (the projects,
    a project, its data or settings), else None."""
    parts = urlsplit(url)
    page = re.search(r"/projects(/\d+(/.*)?)?/?$", parts.path)
    return None if page is None else f"{parts.scheme}://{parts.netloc}{parts.path[:page.start()]}"


def _page_address(url: str, server: str) -> LabelStudioError:
    return LabelStudioError(f"{url}: the address of a Label Studio page; give the server's, {server}")


def _same_server(a: str, b: str) -> bool:
    """Whether server addresses `a` and `b` name one server: the same, or this machine's loopback
    under two names (localhost, 127.0.0.1, ::1) with the same scheme, port and path."""
    first, second = urlsplit(a), urlsplit(b)
    same_place = (first.scheme, first.port, first.path) == (second.scheme, second.port, second.path)
    return a == b or (same_place and {first.hostname, second.hostname} <= LOOPBACK)


def _new_project_way(run_dir: Path, url: str) -> str:
    return f"to send the tasks to a new project: s4al query {shell(run_dir)} --label-studio {url} --new-project"


def send_query(ledger: Ledger, run_name: str, package_dir: Path, url: str, api_key: str | None,
               new_project: bool = False, project_id: int | None = None) -> SentTasks:
    """Sends the tasks of the query package in `package_dir` to the run's project on `url`, making
    it (titled `run_name` and the start of the run's id, with the package's labelling config) and
    recording it in `ledger` the first time, or in place of the run's project with `new_project`;
    `project_id`: an existing project of `url` (made by hand) becomes the run's. A run's project
    stays on one server until another replaces it."""
    url = checked_server(url, api_key)
    recorded = recorded_project(ledger)
    same = False  # the project given by id is the run's already
    if project_id is not None:
        project = Project(url, project_id)
        same = recorded is not None and recorded.id == project_id and _same_server(recorded.url, url)
        replaced = recorded if recorded is not None and not same else None
    else:
        replaced = recorded if new_project else None
        project = None if new_project else project_on(ledger, url)
    client = _client(url, api_key)
    config = (package_dir / "labelling_config.xml").read_text()
    with _server_errors(url, project if project_id is None else None, ledger.run_dir):
        created = project is None
        if created:
            run_id = ledger.get_meta(RUN_ID)  # apart from a twin run's project of the same folder name
            title = f"{run_name} ({run_id[:8]})" if run_id else run_name
            made = client.projects.create(title=title, label_config=config, request_options=ONCE)
            project = Project(url, made.id)
            # before any upload: one project per run; since when, to tell its answers from a replaced one's
            ledger.set_meta(PROJECT_META, {"url": url, "id": project.id, "since": utc_now()})
            edited = False
        else:  # a deleted project answers 404 here, not when listing its tasks
            edited = _label_values(_existing(client, project, project_id).label_config or "") != _label_values(config)
            _refuse_another_runs(client, project, ledger, url)
            if replaced is not None and replaced.id == project.id and _holds_this_runs_tasks(client, project, ledger):
                replaced, same = None, True  # the run's project, its server at another address now: kept as it was
                ledger.set_meta(PROJECT_META, {**ledger.get_meta(PROJECT_META), "url": url})
            elif project_id is not None and (recorded is None or replaced is not None):
                # in place of another project: since now, as one made anew (the run's own, given by id: as it was)
                since = {} if replaced is None else {"since": utc_now()}
                ledger.set_meta(PROJECT_META, {"url": url, "id": project.id, **since})
        tasks_file = package_dir / "tasks.json"  # an image in each task: read twice, one task at a time
        asked = [(task["data"]["cycle"], _regions_of(task["data"])) for task in _tasks(tasks_file)]
        held, repeated = _held_regions(client, project, {cycle for cycle, _ in asked})
        is_new = [held.isdisjoint(regions) for _, regions in asked]
        new_tasks = (task for task, new in zip(_tasks(tasks_file), is_new) if new)
        _upload(client, project, new_tasks, sum(is_new), _rerun_way(ledger.run_dir, url, replaced))
    return SentTasks(project, created, replaced, sum(is_new), len(is_new) - sum(is_new), tuple(repeated), edited,
                     adopted=project_id is not None and not same)


def _existing(client: LabelStudio, project: Project, given_id: int | None):
    """The project `project`, which a run records or the caller gave by id."""
    try:
        return client.projects.get(id=project.id)
    except ApiError as err:
        if err.status_code == 404 and given_id is not None:
            raise LabelStudioError(f"{project.url}: no project {given_id} there (--project takes the number in a "
                                   f"project's address, {project.url}/projects/ID)") from None
        raise


def _holds_this_runs_tasks(client: LabelStudio, project: Project, ledger: Ledger) -> bool:
    """Whether `project` holds a task of this run (its run id in the task's data); False for a run
    without a run id, whose tasks cannot be told."""
    run_id = ledger.get_meta(RUN_ID)
    return run_id is not None and _a_task_whose_run_id(client, project, Operator.EQUAL, run_id) is not None


def _a_task_whose_run_id(client: LabelStudio, project: Project, operator: str, run_id: str):
    """A task of `project` whose data.run_id is (Operator.EQUAL) or is not (NOT_EQUAL) `run_id`, or None."""
    chosen = Filters.create(Filters.AND, [Filters.item(Column.data("run_id"), operator, Type.String,
                                                       Filters.value(run_id))])
    return next(iter(client.tasks.list(project=project.id, query=json.dumps({"filters": chosen}), page_size=1)), None)


def _refuse_another_runs(client: LabelStudio, project: Project, ledger: Ledger, url: str) -> None:
    """A project holding another run's tasks is refused before anything is sent: those tasks ask
    regions of the same numbers, so this run's would count as sent, and every import of either
    run refuses the other's answers. (Tasks without a run id, made by hand, are not looked at.)"""
    run_id = ledger.get_meta(RUN_ID)
    if run_id is None:
        return
    task = _a_task_whose_run_id(client, project, Operator.NOT_EQUAL, run_id)
    if task is None:
        return
    found = (f"{project.page}: project {project.id} holds tasks of another run (task {task.id}, image "
             f"'{task.data.get('image_id')}', run id {str(task.data.get('run_id'))[:8]}; this run's is {run_id[:8]}): "
             "a project serves one run, whose imports refuse any other's answers")
    recorded = recorded_project(ledger)
    if recorded is not None and recorded.id == project.id and _same_server(recorded.url, url):
        raise LabelStudioError(f"{found}. This run's project: delete the other run's tasks in Label Studio, or "
                               f"{_new_project_way(ledger.run_dir, url)}")
    raise LabelStudioError(f"{found}. Give this run's own project, s4al query {shell(ledger.run_dir)} --label-studio "
                           f"{url} --project ID, or {_new_project_way(ledger.run_dir, url)}")


def _label_values(config: str) -> set[str] | None:
    """The label values of a labelling config, None for one that is no XML."""
    try:
        return {label.get("value") for label in ElementTree.fromstring(config).iter("Label")}
    except ElementTree.ParseError:
        return None


def _tasks(path: Path) -> Iterator[dict]:
    return json_list_items(path, "a list of tasks (the tasks.json of s4al query)")


def _regions_of(data: dict) -> set[tuple[int, int]]:
    """The (cycle, region id) pairs a task asks, as `label_studio.task` writes its data."""
    return {(data.get("cycle"), region_id) for region_id in data.get("region_ids") or ()}


def _held_regions(client: LabelStudio, project: Project, cycles: set[int]) -> tuple[set[tuple[int, int]], list[int]]:
    """The (cycle, region id) pairs of the project's tasks of `cycles`, and the ids of its tasks that
    ask a pair an earlier one asks too (the same tasks imported twice: each region would be painted
    twice, and the two refused at import unless painted alike); only these tasks are listed, as each
    carries its image."""
    held, repeated = set(), []
    for cycle in cycles:
        of_cycle = Filters.create(Filters.AND, [Filters.item(Column.data("cycle"), Operator.EQUAL, Type.Number, cycle)])
        for task in client.tasks.list(project=project.id, query=json.dumps({"filters": of_cycle}),
                                      page_size=LISTED_PAGE_TASKS):
            regions = _regions_of(task.data or {})
            if not held.isdisjoint(regions):
                repeated.append(task.id)
            held |= regions
    return held, repeated


def _upload(client: LabelStudio, project: Project, tasks: Iterable[dict], count: int, rerun: str) -> None:
    """Uploads `count` tasks in batches of at most UPLOAD_BYTES of JSON, each once; after a batch
    refused as too large, the later ones within the size that was not."""
    first, limit = 1, [UPLOAD_BYTES]
    for batch in batches_by_size(tasks, _json_bytes, UPLOAD_BYTES):
        for part in batches_by_size(batch, _json_bytes, limit[0]):
            _send(client, project, part, first, count, rerun, limit)
            first += len(part)
        gc.collect()  # the client's finished request sits in reference cycles, holding the batch's body


def _json_bytes(task: dict) -> int:
    return len(json.dumps(task)) + 2  # 2: ", "


# Answers that come from a proxy whose wait for the server ended: the upload may have been stored.
PROXY_GAVE_UP = (408, 502, 503, 504)


def _send(client: LabelStudio, project: Project, batch: list[dict], first: int, count: int, rerun: str,
          limit: list[int]) -> None:
    """Uploads `batch`, tasks `first`... of the `count` new; one the server finds too large (a proxy's
    limit, below Label Studio's own; nothing is stored) in halves, lowering `limit` for the batches after."""
    tasks_sent = f"tasks {first}-{first + len(batch) - 1} of {count} new"
    try:
        queued = client.projects.import_tasks(id=project.id, request=batch, request_options=SLOW_REQUEST | ONCE).import_
    except ApiError as err:
        if err.status_code == 413 and len(batch) > 1:
            half = len(batch) // 2
            limit[0] = min(limit[0], sum(map(_json_bytes, batch)) // 2)
            _send(client, project, batch[:half], first, count, rerun, limit)
            _send(client, project, batch[half:], first + half, count, rerun, limit)
            return
        if err.status_code in (401, 403, 404):
            raise
        if err.status_code in PROXY_GAVE_UP:
            raise LabelStudioError(f"{project.url}: no answer in time to the upload of {tasks_sent} to project "
                                   f"{project.id} ({_refusal(err)}); the server may still be storing them: wait "
                                   f"until it is idle, then {rerun}") from None
        too_large = " (one task is over the server's upload limit: raise it, e.g. nginx's client_max_body_size)"
        raise LabelStudioError(f"{project.url}: project {project.id} refused the upload of {tasks_sent} "
                               f"({_refusal(err)}){too_large if err.status_code == 413 else ''}; {rerun}") from None
    except (httpx.ConnectError, httpx.ConnectTimeout) as err:  # nothing went out
        raise LabelStudioError(f"{project.url}: Label Studio server unreachable ({str(err) or type(err).__name__}); "
                               f"{tasks_sent} were not sent; {rerun}") from None
    except httpx.TransportError as err:  # sent, perhaps stored: no answer tells
        raise LabelStudioError(f"{project.url}: no answer to the upload of {tasks_sent} to project {project.id} "
                               f"({str(err) or type(err).__name__}); the server may still be storing them: "
                               f"wait until it is idle, then {rerun}") from None
    if queued is not None:
        _wait_for_import(client, project, queued, tasks_sent, rerun)


def _wait_for_import(client: LabelStudio, project: Project, import_id: int, tasks_sent: str, rerun: str) -> None:
    """Waits until the server has stored an upload it took to store in the background (Label Studio
    Enterprise answers an upload with an import id; errors in its tasks show only in that import's
    status)."""
    state = _finished(lambda: client.tasks.create_many_status(id=project.id, import_pk=import_id))
    if state.status == "failed":
        raise LabelStudioError(f"{project.url}: project {project.id} failed to store {tasks_sent} (import "
                               f"{import_id}: {(state.error or 'no reason given')[:SHOWN_BODY_CHARS]}); {rerun}")
    if state.status != "completed":
        raise LabelStudioError(f"{project.url}: project {project.id} is still storing {tasks_sent} (import "
                               f"{import_id}, {state.status}) after {BACKGROUND_WAIT_SECONDS:.0f} s; wait until it "
                               f"has, then {rerun}")


def _finished(state: Callable[[], T]) -> T:
    """The state of a job the server runs in the background (`state()` asks it) once it has
    completed or failed, or after BACKGROUND_WAIT_SECONDS."""
    deadline = time.monotonic() + BACKGROUND_WAIT_SECONDS
    pause = 0.5
    while True:
        now = state()
        if now.status in ("completed", "failed") or time.monotonic() + pause > deadline:
            return now
        time.sleep(pause)
        pause = min(2 * pause, 10.0)


def _rerun_way(run_dir: Path, url: str, replaced: Project | None) -> str:
    """What to do after a failed upload: the same query again sends only what the project lacks."""
    way = (f"the tasks sent before are in the project; `s4al query {shell(run_dir)} --label-studio {url}` again "
           "sends only the tasks it lacks")
    if replaced is None:
        return way
    return (f"{way} (without --new-project: the new project is the run's now; project {replaced.id} of "
            f"{replaced.url}, which it replaced, may hold answers to import from its export)")


def download_export(run_dir: Path, api_key: str | None) -> Path:
    """Downloads the full JSON export of the run's project (every task, answered or not) into
    RUN/answers/label_studio_TIMESTAMP.json, written whole or not at all; returns its path. The
    export is a snapshot, which the server builds in batches (in the background where it runs a
    job queue, so no proxy's time limit cuts a large project's) and which is removed from the
    project's exports once received (Label Studio Community keeps its file on the server's disk)."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    with Ledger(folder.ledger_file(), readonly=True) as ledger:
        project = recorded_project(ledger)
    if project is None:
        raise LabelStudioError(f"{run_dir}: no Label Studio project yet; send the tasks first with "
                               f"`s4al query {shell(run_dir)} --label-studio URL`")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = folder.answers_dir / f"label_studio_{stamp}_{_tag(project)}.json"
    path.parent.mkdir(exist_ok=True)
    client = _client(project.url, api_key)
    by_hand = ", or export the project in Label Studio (JSON) and import that file"
    with _server_errors(project.url, project, run_dir, slow=by_hand):
        client.projects.get(id=project.id)  # the server and the project answer, before the long wait
        snapshot = client.projects.exports.create(
            id=project.id, title=f"s4al import {stamp}", task_filter_options={"only_with_annotations": False},
            annotation_filter_options={"usual": True, "ground_truth": True, "skipped": True},
            request_options=SLOW_REQUEST | ONCE)
        built = _finished(lambda: client.projects.exports.get(id=project.id, export_pk=snapshot.id))
        if built.status not in ("completed", "failed"):  # left to finish: deleted now, its file would stay
            raise LabelStudioError(f"{project.url}: project {project.id}'s export {snapshot.id} is not built after "
                                   f"{BACKGROUND_WAIT_SECONDS:.0f} s (status {built.status}): export the project in "
                                   "Label Studio (JSON) and import that file")
        try:
            if built.status == "failed":
                raise LabelStudioError(f"{project.url}: project {project.id}'s export {snapshot.id} failed; try "
                                       f"again{by_hand}")
            with atomic_write(path) as file:  # the snapshot's own file, not converted on the way (no exportType)
                for part in client.projects.exports.download(id=project.id, export_pk=snapshot.id,
                                                             request_options=SLOW_REQUEST):
                    file.write(part)
        finally:
            with suppress(ApiError, httpx.HTTPError):  # a snapshot left on the server only takes its disk
                client.projects.exports.delete(id=project.id, export_pk=snapshot.id)
    return path


def _tag(project: Project) -> str:
    """The project in a download's file name: its id and a digest of its server's address."""
    return f"project{project.id}-{hashlib.sha256(project.url.encode()).hexdigest()[:8]}"


def remove_earlier_downloads(export: Path) -> int:
    """Removes the project's exports downloaded into the answers folder before `export`, once it is
    imported: each is the whole project as it was, and what they answered is in the run (a project
    exported after every cycle would otherwise keep every image once per import). Another project's
    (one replaced since) stay: not imported, they would be the only copy of its answers. Returns how many."""
    tag = export.stem.split("_")[-1]
    earlier = [path for path in export.parent.glob(f"label_studio_*_{tag}.json") if path.name < export.name]
    for path in earlier:
        path.unlink()
    return len(earlier)


def checked_server(url: str, api_key: str | None) -> str:
    """`url` without a trailing slash, once it reads as a server address and a usable key is given."""
    parts = urlsplit(url)
    try:
        parts.port  # a port that is no number raises
    except ValueError:
        parts = None
    if not url.startswith(("http://", "https://")) or parts is None or not parts.hostname:
        raise LabelStudioError(f"{url}: not a server address (expected http://HOST:PORT or https://...)")
    _key(url, api_key)
    return url.rstrip("/")


def _key(url: str, api_key: str | None) -> str:
    """The API key without the line's end it may have been pasted with; one that is missing or holds
    a space, a control or a non-ASCII character is refused (the message never shows it)."""
    key = (api_key or "").strip()
    if not key:
        raise LabelStudioError(f"{url}: no API key; set LABEL_STUDIO_API_KEY (or give --api-key) to your "
                               "Label Studio access token (Account & Settings)")
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        raise LabelStudioError(f"{url}: the API key holds a space, a control character or a non-ASCII one; set "
                               "LABEL_STUDIO_API_KEY to your access token alone (Account & Settings)")
    return key


def _client(url: str, api_key: str | None) -> LabelStudio:
    url = checked_server(url, api_key)
    with _server_errors(url):  # the client refuses an expired key when made
        _check_label_studio(url)
        # the trailing slash keeps a path prefix (https://host/ls) in the URL the client refreshes a
        # personal access token at; its other requests are joined without a double slash
        return LabelStudio(base_url=f"{url}/", api_key=_key(url, api_key))


def _check_label_studio(url: str) -> None:
    """Label Studio answers JSON at URL/api/projects/ (a refusal without a key too); the address of
    one of its pages, or of another server, does not (its requests would be refused as missing
    projects). A redirect is refused: the client would turn the uploads it follows into GETs."""
    answer = httpx.get(f"{url}/api/projects/", timeout=60.0, follow_redirects=True)
    if answer.history:
        moved = str(answer.url).removesuffix("/api/projects/")
        raise LabelStudioError(f"{url}: redirects to {moved}; give that address")
    try:
        answer.json()
    except ValueError:
        server = _server_of_page(url)
        if server is not None:
            raise _page_address(url, server) from None
        if answer.status_code in (404, 200):
            raise LabelStudioError(f"{url}: not the address of a Label Studio server (HTTP {answer.status_code} "
                                   f"without JSON at {url}/api/projects/); give the address Label Studio is served "
                                   "at, as http://HOST:PORT") from None
        raise LabelStudioError(f"{url}: answered HTTP {answer.status_code} without JSON at {url}/api/projects/ "
                               "(a proxy in front of a Label Studio that is down or starting?)") from None


@contextmanager
def _server_errors(url: str, project: Project | None = None, run_dir: Path | None = None,
                   slow: str = "") -> Iterator[None]:
    """The server's refusals and silences as LabelStudioErrors naming `url` (and the run's project);
    `slow`: what else to do when it does not answer in time."""
    try:
        yield
    except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
        raise LabelStudioError(f"{url}: Label Studio did not answer in time; a busy server, or the export of a large "
                               f"project, can take longer: try again later{slow}") from None
    except httpx.TransportError as err:
        raise LabelStudioError(f"{url}: Label Studio server unreachable ({str(err) or type(err).__name__}); is it "
                               "running, at this address?") from None
    except httpx.TooManyRedirects:
        raise LabelStudioError(f"{url}: redirects without end; give the address Label Studio is served at") from None
    except json.JSONDecodeError:  # the client reads every answer as JSON
        raise LabelStudioError(f"{url}: answered with something other than JSON; is it the address of a Label "
                               "Studio server (not of one of its pages)?") from None
    except ApiError as err:
        if err.status_code in (401, 403):
            raise LabelStudioError(f"{url}: the API key was refused (HTTP {err.status_code}{_reason(err)}); give "
                                   "your access token in LABEL_STUDIO_API_KEY or --api-key (Account & Settings; a "
                                   "personal access token that expired or was revoked needs a new one)") from None
        if err.status_code in PROXY_GAVE_UP:  # a proxy in front of the server, or the server, stopped waiting
            raise LabelStudioError(f"{url}: Label Studio did not answer in time (HTTP {err.status_code}); a busy "
                                   f"server, or the export of a large project, can take longer: try again "
                                   f"later{slow}") from None
        if err.status_code == 404 and project is not None:
            raise LabelStudioError(f"{url}: project {project.id} not found (deleted?), the project this run "
                                   "sends its tasks to and imports its answers from; "
                                   f"{_new_project_way(run_dir, url)}") from None
        raise LabelStudioError(f"{url}: Label Studio refused the request ({_refusal(err)})") from None


def _reason(err: ApiError) -> str:
    """The server's reason for refusing a key, as `: reason`, where it gives one."""
    detail = err.body.get("detail") if isinstance(err.body, dict) else None
    return f": {detail[:SHOWN_BODY_CHARS]}" if isinstance(detail, str) else ""


def _refusal(err: ApiError) -> str:
    body = err.body if isinstance(err.body, str) else json.dumps(err.body, default=str)
    return f"HTTP {err.status_code}: {body[:SHOWN_BODY_CHARS]}"
