"""The admin/inspection API under `/_sandbox/`: JSON, no auth, for tests and for people poking at `make run`.

- `GET /_sandbox/predictions`: `{model run id: [stored NDJSON lines]}`.
- `GET /_sandbox/model-runs/{id}/predictions`: `[stored NDJSON lines]`, one per uuid, latest upload wins.
- `GET /_sandbox/counts`: `{model run id: counts}`.
- `GET /_sandbox/model-runs/{id}/counts`: `{"rows", "uploads", "uuids", "reuploaded_uuids",
  "uploads_by_uuid"}`.
- `GET /_sandbox/imports[?model_run_id=]`: `[{"id", "name", "modelRunId", "state", "progress", "rows",
  "failedRows"}]`.
- `GET /_sandbox/requests[?operation=]`: `[{"t", "method", "path", "operation", "model_run_id",
  "import_name", "status", "fault"}]`, `t` in seconds on the sandbox's monotonic clock.
- `GET /_sandbox/faults`: the rules added since the last clear, with `id`, `fired`, `skipped`, `in_force`
  (and `status` / `message` as the kind's defaults fill them in).
- `POST /_sandbox/faults`: a fault rule or a list of them (see `faults.py`: `kind`, `operation`, `count`,
  `duration_s`, `skip`, `model_run_id`, `status`, `retry_after_s`, `delay_s`, `code`, `message`,
  `exception_status`, `uuids`, `data_rows`, `fraction`) → `{"ids": [...]}`; 400 with pydantic's errors if
  a rule is invalid.
- `DELETE /_sandbox/faults`: clear all rules; `DELETE /_sandbox/faults/{id}`: remove one.
- `POST /_sandbox/reset`: forget everything (model runs, imports, predictions, log, faults, blobs).
- `PUT /_sandbox/model-runs/{id}/ontology`: a Labelbox `normalized` ontology JSON for the model run.
- `GET`/`PUT`/`POST /_sandbox/model-runs/{id}/data-rows`: the model run's data-row membership,
  `{"dataRowIds": [...], "globalKeys": [...]}` (PUT replaces it, POST adds to it). Rows on other data rows
  FAIL (`DataRowNotInModelRun`) unless the sandbox runs without membership checks; this seeds membership
  for a test that is not about registering data rows (the real way is the registration mutation).
- `PUT /_sandbox/blobs/{name}`: raw bytes, then served at `GET /blobs/{name}` (for `fileUrl` imports).
- `GET /_sandbox/rate-limit`: `{"per_s", "burst", "admitted", "refused"}`, or `null` without a limit;
  `PUT /_sandbox/rate-limit` `{"per_s": N, "burst": M}` sets it (`{"per_s": null}` removes it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pydantic
from aiohttp import web

from labelbox_sandbox.faults import FaultRule
from labelbox_sandbox.state import SandboxState, UnknownModelRun

PREFIX = "/_sandbox"


class AdminApi:
    """Admin handlers over a `SandboxState`."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(f"{PREFIX}/predictions", self.all_predictions),
            web.get(f"{PREFIX}/model-runs/{{id}}/predictions", self.predictions),
            web.get(f"{PREFIX}/counts", self.all_counts),
            web.get(f"{PREFIX}/model-runs/{{id}}/counts", self.counts),
            web.get(f"{PREFIX}/imports", self.imports),
            web.get(f"{PREFIX}/requests", self.requests),
            web.get(f"{PREFIX}/faults", self.faults),
            web.post(f"{PREFIX}/faults", self.add_faults),
            web.delete(f"{PREFIX}/faults", self.clear_faults),
            web.delete(f"{PREFIX}/faults/{{id}}", self.remove_fault),
            web.post(f"{PREFIX}/reset", self.reset),
            web.put(f"{PREFIX}/model-runs/{{id}}/ontology", self.load_ontology),
            web.get(f"{PREFIX}/model-runs/{{id}}/data-rows", self.data_rows),
            web.put(f"{PREFIX}/model-runs/{{id}}/data-rows", self.set_data_rows),
            web.post(f"{PREFIX}/model-runs/{{id}}/data-rows", self.add_data_rows),
            web.put(f"{PREFIX}/blobs/{{name}}", self.put_blob),
            web.get(f"{PREFIX}/rate-limit", self.rate_limit),
            web.put(f"{PREFIX}/rate-limit", self.set_rate_limit),
        ]

    async def rate_limit(self, request: web.Request) -> web.Response:
        buckets = self.state.rate_limit
        return web.json_response(None if buckets is None else buckets.describe())

    async def set_rate_limit(self, request: web.Request) -> web.Response:
        body = await request.json()
        per_s = body.get("per_s") if isinstance(body, dict) else None
        burst = body.get("burst") if isinstance(body, dict) else None
        valid = (per_s is None or (isinstance(per_s, int | float) and per_s > 0)) and (
            burst is None or isinstance(burst, int | float)
        )
        if not isinstance(body, dict) or not valid:
            return web.json_response(
                {"error": 'expected {"per_s": positive number or null, "burst"}'}, status=400
            )
        self.state.set_rate_limit(per_s, burst)
        return await self.rate_limit(request)

    async def all_predictions(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.all_predictions())

    async def predictions(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.predictions(request.match_info["id"]))

    async def all_counts(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.all_counts())

    async def counts(self, request: web.Request) -> web.Response:
        model_run_id = request.match_info["id"]
        uploads = self.state.upload_counts(model_run_id)
        return web.json_response({**self.state.counts(model_run_id), "uploads_by_uuid": uploads})

    async def imports(self, request: web.Request) -> web.Response:
        model_run_id = request.query.get("model_run_id")
        now = self.state.clock()
        records = [r for r in self.state.imports.values() if model_run_id in (None, r.model_run_id)]
        return web.json_response(
            [
                {
                    "id": r.id,
                    "name": r.name,
                    "modelRunId": r.model_run_id,
                    "state": r.state_at(now),
                    "progress": r.progress_at(now),
                    "rows": len(r.statuses),
                    "failedRows": sum(1 for s in r.statuses if s["status"] == "FAILURE"),
                }
                for r in records
            ]
        )

    async def requests(self, request: web.Request) -> web.Response:
        records = self.state.requests(request.query.get("operation"))
        return web.json_response([dataclasses.asdict(record) for record in records])

    async def faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.faults.describe())

    async def add_faults(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            rules = [FaultRule.model_validate(item) for item in (body if isinstance(body, list) else [body])]
        except pydantic.ValidationError as e:
            return _bad_request(e.errors(include_url=False, include_context=False))
        return web.json_response({"ids": [self.state.add_fault(rule) for rule in rules]})

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.state.clear_faults()
        return web.json_response({"cleared": True})

    async def remove_fault(self, request: web.Request) -> web.Response:
        try:
            removed = self.state.faults.remove(int(request.match_info["id"]))
        except ValueError:
            removed = False
        return web.json_response({"removed": removed}, status=200 if removed else 404)

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return web.json_response({"reset": True})

    async def load_ontology(self, request: web.Request) -> web.Response:
        normalized = await _json_body(request)
        if not isinstance(normalized, dict):
            return _bad_request("the ontology must be a JSON object (Labelbox normalized ontology)")
        return _model_run_call(lambda: self.state.load_ontology(request.match_info["id"], normalized))

    async def data_rows(self, request: web.Request) -> web.Response:
        try:
            self.state.settle_tasks()
            run = self.state.model_run(request.match_info["id"])
        except UnknownModelRun:
            return web.json_response({"error": "unknown model run"}, status=404)
        return web.json_response(
            {"dataRowIds": sorted(run.data_row_ids), "globalKeys": sorted(run.global_keys)}
        )

    async def set_data_rows(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _bad_request('expected {"dataRowIds": [...], "globalKeys": [...]}')
        ids, keys = body.get("dataRowIds") or [], body.get("globalKeys") or []
        return _model_run_call(lambda: self.state.set_data_rows(request.match_info["id"], ids, keys))

    async def add_data_rows(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            return _bad_request('expected {"dataRowIds": [...], "globalKeys": [...]}')
        ids, keys = body.get("dataRowIds") or [], body.get("globalKeys") or []
        return _model_run_call(lambda: self.state.add_data_rows(request.match_info["id"], ids, keys))

    async def put_blob(self, request: web.Request) -> web.Response:
        self.state.blobs[request.match_info["name"]] = await request.read()
        return web.json_response({"path": f"/blobs/{request.match_info['name']}"})


async def _json_body(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except ValueError as e:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"invalid JSON: {e}"}), content_type="application/json"
        ) from e


def _bad_request(detail: Any) -> web.Response:
    return web.json_response({"error": detail}, status=400)


def _model_run_call(call: Callable[[], None]) -> web.Response:
    try:
        call()
    except UnknownModelRun:
        return web.json_response({"error": "unknown model run"}, status=404)
    return web.json_response({"ok": True})
