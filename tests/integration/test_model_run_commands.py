"""`check`, `ontology` and `send-ground-truth` as processes against the local Labelbox-compatible server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson

from labelbox_sandbox import Sandbox
from tests.conftest import API_KEY
from tests.support import factories
from tests.support.factories import bbox, every_type, message, radio
from worker.cli_modelrun import feature_rows, format_table

ONTOLOGY = factories.ontology_every_type()
RUN = "run-commands"


async def _run(
    sandbox: Sandbox, *args: str, stdin: bytes = b"", key: str = API_KEY
) -> subprocess.CompletedProcess[bytes]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LABELBOX_API_KEY": key,
        "LABELBOX_GRAPHQL_URL": sandbox.graphql_url,
        "LABELBOX_POLL_INTERVAL_S": "0.05",
    }
    command = [sys.executable, "-m", "worker", *args]
    return await asyncio.to_thread(
        subprocess.run, command, input=stdin, env=env, capture_output=True, timeout=120, check=False
    )


async def test_check_reports_per_message_and_exits_1_on_a_mismatch(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.state.load_ontology(RUN, ONTOLOGY)
    source = tmp_path / "messages.jsonl"
    lines = [
        orjson.dumps(message(*every_type(), model_run_id=RUN)),
        orjson.dumps(message(radio(answer={"name": "nope"}), model_run_id=RUN)),
        b"{not json",
    ]
    source.write_bytes(b"\n".join(lines) + b"\n")
    done = await _run(sandbox, "check", "--model-run", RUN, str(source))
    assert done.returncode == 1, done.stderr
    reports = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [r["status"] for r in reports] == ["ok", "mismatch", "rejected"]
    assert reports[0]["predictions"] == len(every_type())
    assert reports[1]["errors"][0].startswith("predictions.0.answer.name: unknown_answer")
    assert reports[2]["reason"] == "invalid_json"
    assert not sandbox.state.requests("create_import"), "nothing uploaded"


async def test_check_exits_0_when_everything_fits(sandbox: Sandbox) -> None:
    sandbox.state.load_ontology(RUN, ONTOLOGY)
    done = await _run(
        sandbox, "check", "--model-run", RUN, stdin=orjson.dumps(message(bbox(), model_run_id=RUN))
    )
    assert done.returncode == 0, done.stderr
    assert b"ok 1" in done.stderr


async def test_ontology_prints_the_features(sandbox: Sandbox) -> None:
    sandbox.state.load_ontology(RUN, ONTOLOGY)
    done = await _run(sandbox, "ontology", "--model-run", RUN)
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert text.splitlines()[0].split() == ["name", "kind", "schema", "id", "options"]
    assert "box > sub > s1 > sub_detail" in text
    box = ONTOLOGY["tools"][0]
    assert any(
        line.split()[:3] == ["box", "tool:rectangle", box["featureSchemaId"]] for line in text.splitlines()
    )


def test_feature_rows_cover_every_depth() -> None:
    rows = feature_rows(ONTOLOGY)
    names = [r[0] for r in rows]
    assert "q > a > sub > s1 > sub_detail" in names
    assert "cl > b > cl_reason" in names
    assert format_table(rows).count("\n") == len(rows)


async def test_send_ground_truth_by_project_and_by_label_ids(sandbox: Sandbox, tmp_path: Path) -> None:
    done = await _run(sandbox, "send-ground-truth", "--model-run", RUN, "--project", "proj-1")
    assert done.returncode == 0, done.stderr
    assert b"ground truth registered" in done.stdout
    assert b"COMPLETE" in done.stdout
    ids = tmp_path / "labels.txt"
    ids.write_text("label-1\nlabel-2\n")
    done = await _run(sandbox, "send-ground-truth", "--model-run", RUN, "--label-ids", str(ids))
    assert done.returncode == 0, done.stderr
    run = sandbox.state.model_run(RUN)
    assert run.project_ids == {"proj-1"}
    assert run.label_ids == {"label-1", "label-2"}


async def test_commands_refuse_a_bad_key_clearly(sandbox: Sandbox) -> None:
    done = await _run(sandbox, "ontology", "--model-run", RUN, key="wrong-key")
    assert done.returncode == 3
    assert b"API key" in done.stderr
    assert b"wrong-key" not in done.stderr + done.stdout
