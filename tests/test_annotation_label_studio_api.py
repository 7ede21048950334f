"""The client side of the run's Label Studio project, without a server: uploads split by size, and
what is refused before anything is sent (the server tests are in test_annotation_label_studio_server.py)."""

import pytest
from typer.testing import CliRunner

from s4al.active.ledger import Ledger
from s4al.annotation.label_studio_api import PROJECT_META, LabelStudioError, batches_by_size, project_on
from s4al.cli import app


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
        "query with --label-studio http://old:8080, or to send the tasks to a new project: "
        f"s4al query {tmp_path} --label-studio http://new:8080 --new-project")


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
