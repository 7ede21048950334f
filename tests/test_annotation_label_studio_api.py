"""The client side of the run's Label Studio project, without a server: uploads split by size, and
what is refused before anything is sent (the server tests are in test_annotation_label_studio_server.py)."""

import pytest
from typer.testing import CliRunner

from s4al.active.ledger import Ledger
from s4al.annotation.label_studio_api import PROJECT_META, LabelStudioError, chunks_by_size, project_on
from s4al.cli import app


def test_uploads_are_split_into_consecutive_chunks_within_the_limit_a_larger_task_alone():
    assert chunks_by_size([40, 30, 30, 120, 10, 90], limit=100) == [range(0, 3), range(3, 4), range(4, 6)]
    assert chunks_by_size([150, 10, 90, 6], limit=100) == [range(0, 1), range(1, 3), range(3, 4)]
    assert chunks_by_size([], limit=100) == []


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


def test_new_project_without_a_server_is_refused_before_reading_the_run(tmp_path):
    result = CliRunner().invoke(app, ["query", str(tmp_path), "--new-project"], env={"LABEL_STUDIO_API_KEY": "key"})
    assert result.exit_code == 2
    assert "--new-project makes a new Label Studio project: give --label-studio URL too" in result.output
