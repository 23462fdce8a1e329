"""The GraphQL root fields the sandbox serves, each a plain function of the state and the arguments.

No I/O, no awaits: every input the HTTP layer had to wait for (the uploaded file, the bytes behind a
`fileUrl`) arrives in `Context`; the imports a request created are reported back in `Context.created`, so
that the HTTP layer can act out their faults (a lost response). Errors are raised as `GraphQLError`.

Errors a client must recognise:
- duplicate import name in a model run: HTTP 200, `{"errors": [{"message": "Import with name '<name>' already
  exists in model run '<id>'", "extensions": {"code": "RESOURCE_CONFLICT"}}], "data": null}` (the Labelbox SDK
  raises `ResourceConflict` for that code);
- unknown import name: `RESOURCE_NOT_FOUND` (the SDK then raises `ResourceNotFoundError`);
- `contentLength` that differs from the file's byte length, both or neither of `filePayload` / `fileUrl`:
  `MALFORMED_REQUEST`. The one exception: a request whose `X-User-Agent` starts with `python-sdk` (the
  Labelbox SDK) may send the SDK's inflated `len(str(file_bytes))`, which real Labelbox accepts from it;
- an import refused whole (the `import_refused` fault): `INTERNAL_SERVER_ERROR` with
  `extensions.exception.status` 400.

Arguments arrive validated and coerced against the schema (`graphql.py`), so a resolver only checks what
the schema cannot say.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from labelbox_sandbox.graphql import GraphQLError, RootField, Upload, project
from labelbox_sandbox.state import (
    EMPTY_ONTOLOGY,
    ImportNameConflict,
    ImportRecord,
    ImportRefused,
    ModelRun,
    SandboxState,
    UnknownModelRun,
)

CREATE_IMPORT = "createModelErrorAnalysisPredictionImport"
POLL_IMPORT = "modelErrorAnalysisPredictionImport"
TIMESTAMP = "2024-01-01T00:00:00.000Z"


@dataclass(frozen=True)
class FetchedFile:
    """What fetching a `fileUrl` gave: the bytes, or why there are none."""

    data: bytes | None
    error: str | None = None


@dataclass(frozen=True)
class Context:
    """What a resolver may read besides its arguments.

    `files_url`: the base of the status/error/input file URLs. `sdk_content_length`: the request comes from
    the Labelbox Python SDK, whose `contentLength` for in-memory uploads is `len(str(bytes))`.
    """

    state: SandboxState
    files_url: str
    fetched: FetchedFile | None = None
    sdk_content_length: bool = False
    created: list[ImportRecord] = field(default_factory=list)


Resolve = Callable[[Context, Mapping[str, Any]], Any]


@dataclass(frozen=True)
class RootResolver:
    operation: str
    resolve: Resolve


def resolve_field(context: Context, root: RootField) -> Any:
    """The value of one root field, projected on its selection. Raises GraphQLError."""
    if root.name == "__typename":
        return root.type_name
    resolver = ROOT_FIELDS.get(root.name)
    if resolver is None:  # the schema has a root field that no resolver serves: a sandbox bug
        raise GraphQLError(f"The sandbox does not serve {root.name}", "INTERNAL_SERVER_ERROR")
    return project(resolver.resolve(context, root.arguments), root.selection, root.type_name)


def operation_of(root: RootField | str) -> str:
    """The fault/log operation name of a root field or field name (`unknown` for fields not served)."""
    resolver = ROOT_FIELDS.get(root if isinstance(root, str) else root.name)
    return resolver.operation if resolver else "unknown"


def model_run_and_import_name(root: RootField, state: SandboxState) -> tuple[str | None, str | None]:
    """The model run a request is about (named, or reached: a model's, an ontology's, a task's) and the
    import name, for the request log and for faults scoped to one model run."""
    operation = operation_of(root)
    data, where = _object(root.arguments, "data"), _object(root.arguments, "where")
    model_run_id = data.get("modelRunId") or where.get("modelRunId")
    if model_run_id is None and operation in ("model_run", "register_data_rows", "register_labels"):
        model_run_id = where.get("id")
    if model_run_id is None and operation in ("model", "ontology", "task_status"):
        model_run_id = _reached_model_run(state, operation, where.get("id"))
    name = data.get("name") or where.get("name") if operation in ("create_import", "poll_import") else None
    return _str_or_none(model_run_id), _str_or_none(name)


def _reached_model_run(state: SandboxState, operation: str, some_id: Any) -> str | None:
    if not isinstance(some_id, str):
        return None
    if operation == "task_status":
        task = state.tasks.get(some_id)
        return task.model_run_id if task is not None else None
    find = state.model_run_by_model if operation == "model" else state.model_run_by_ontology
    run = find(some_id)
    return run.id if run is not None else None


def import_view(record: ImportRecord, now: float, files_url: str) -> dict[str, Any]:
    """An import as `createModelErrorAnalysisPredictionImport` and its polling query answer it."""
    state = record.state_at(now)
    base = f"{files_url}/{record.id}"
    return {
        "id": record.id,
        "name": record.name,
        "modelRunId": record.model_run_id,
        "state": state,
        "progress": record.progress_at(now),
        "inputFileUrl": f"{base}/input.ndjson",
        "errorFileUrl": f"{base}/errors.ndjson" if state != "RUNNING" else None,
        "statusFileUrl": f"{base}/status.ndjson" if state == "FINISHED" else None,
        "createdAt": TIMESTAMP,
        "updatedAt": TIMESTAMP,
        "createdBy": None,
    }


def _create_import(context: Context, arguments: Mapping[str, Any]) -> dict[str, Any]:
    data = _object(arguments, "data")
    model_run_id, name = _required_str(data, "modelRunId"), _required_str(data, "name")
    payload, failure = _import_payload(context, data)
    try:
        record = context.state.create_import(model_run_id, name, payload, failure=failure)
    except ImportNameConflict as e:
        raise GraphQLError(str(e), "RESOURCE_CONFLICT") from e
    except ImportRefused as e:
        raise GraphQLError(str(e), "INTERNAL_SERVER_ERROR", exception_status=400) from e
    except UnknownModelRun as e:
        raise GraphQLError(f"Model run '{model_run_id}' not found", "RESOURCE_NOT_FOUND") from e
    context.created.append(record)
    return import_view(record, context.state.clock(), context.files_url)


def _import_payload(context: Context, data: Mapping[str, Any]) -> tuple[bytes, str | None]:
    """The bytes to import, and why the import must fail if they could not be had."""
    if data.get("filePayload") is not None and data.get("fileUrl") is not None:
        raise GraphQLError("Provide only one of filePayload and fileUrl", "MALFORMED_REQUEST")
    if data.get("filePayload") is not None:
        return _uploaded_bytes(context, _object(data, "filePayload")), None
    if data.get("fileUrl") is not None and context.fetched is not None:
        return _fetched_bytes(context.fetched)
    raise GraphQLError("One of filePayload or fileUrl is required", "MALFORMED_REQUEST")


def _uploaded_bytes(context: Context, file_payload: Mapping[str, Any]) -> bytes:
    upload = file_payload.get("file")
    if not isinstance(upload, Upload):
        raise GraphQLError(
            "filePayload.file: no file part was uploaded for this variable", "MALFORMED_REQUEST"
        )
    declared = file_payload.get("contentLength")
    if declared == len(upload.data) or (context.sdk_content_length and declared == len(str(upload.data))):
        return upload.data
    message = (
        f"contentLength {declared!r} does not match the uploaded file's length of {len(upload.data)} bytes"
    )
    raise GraphQLError(message, "MALFORMED_REQUEST")


def _fetched_bytes(fetched: FetchedFile) -> tuple[bytes, str | None]:
    if fetched.data is not None:
        return fetched.data, None
    return b"", f"Could not fetch fileUrl: {fetched.error}"


def _poll_import(context: Context, arguments: Mapping[str, Any]) -> dict[str, Any]:
    where = _object(arguments, "where")
    model_run_id, name = _required_str(where, "modelRunId"), _required_str(where, "name")
    record = context.state.find_import(model_run_id, name)
    if record is None:
        message = f"No prediction import named '{name}' in model run '{model_run_id}'"
        raise GraphQLError(message, "RESOURCE_NOT_FOUND")
    return import_view(record, context.state.clock(), context.files_url)


def _model_run(context: Context, arguments: Mapping[str, Any]) -> dict[str, Any]:
    run = _existing_model_run(context.state, _required_str(_object(arguments, "where"), "id"))
    return {
        "id": run.id,
        "name": f"sandbox model run {run.id}",
        "createdAt": TIMESTAMP,
        "updatedAt": TIMESTAMP,
        "createdBy": None,
        "modelId": run.model_id,
        "trainingMetadata": None,
        "modelAppId": None,
    }


def _user(context: Context, arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": "clsandboxuser000000000001",
        "email": "sandbox@localhost",
        "name": "Sandbox User",
        "nickname": "sandbox",
        "picture": None,
        "createdAt": TIMESTAMP,
        "updatedAt": TIMESTAMP,
        "lastLoginAt": TIMESTAMP,
        "isViewer": False,
        "isExternalUser": False,
    }


def _model(context: Context, arguments: Mapping[str, Any]) -> dict[str, Any]:
    model_id = _required_str(_object(arguments, "where"), "id")
    run = context.state.model_run_by_model(model_id)
    if run is None:
        raise GraphQLError(f"Model '{model_id}' not found", "RESOURCE_NOT_FOUND")
    return {
        "id": model_id,
        "name": f"sandbox model {model_id}",
        "ontologyId": run.ontology_id,
        "createdAt": TIMESTAMP,
    }


def _ontology(context: Context, arguments: Mapping[str, Any]) -> dict[str, Any]:
    ontology_id = _required_str(_object(arguments, "where"), "id")
    run = context.state.model_run_by_ontology(ontology_id)
    if run is None:
        raise GraphQLError(f"Ontology '{ontology_id}' not found", "RESOURCE_NOT_FOUND")
    normalized = run.ontology if run.ontology is not None else EMPTY_ONTOLOGY
    return {
        "id": ontology_id,
        "name": f"sandbox ontology {ontology_id}",
        "description": None,
        "createdAt": TIMESTAMP,
        "updatedAt": TIMESTAMP,
        "mediaType": "IMAGE",
        "normalized": normalized,
        "objectSchemaCount": len(normalized.get("tools", [])),
        "classificationSchemaCount": len(normalized.get("classifications", [])),
    }


def _register_data_rows(context: Context, arguments: Mapping[str, Any]) -> str:
    run = _existing_model_run(context.state, _required_str(_object(arguments, "where"), "id"))
    data = _object(arguments, "data")
    data_row_ids, global_keys = _str_list(data, "dataRowIds"), _str_list(data, "globalKeys")
    if not data_row_ids and not global_keys:
        raise GraphQLError("Provide dataRowIds or globalKeys", "MALFORMED_REQUEST")
    return context.state.create_task("data_rows", run.id, data_row_ids, global_keys).id


def _register_project_labels(context: Context, arguments: Mapping[str, Any]) -> str:
    where = _object(arguments, "where")
    run = _existing_model_run(context.state, _required_str(where, "modelRunId"))
    run.project_ids.add(_required_str(where, "projectId"))
    return context.state.create_task("labels", run.id).id


def _register_labels(context: Context, arguments: Mapping[str, Any]) -> str:
    run = _existing_model_run(context.state, _required_str(_object(arguments, "where"), "id"))
    label_ids = _str_list(_object(arguments, "data"), "labelIds")
    if not label_ids:
        raise GraphQLError("labelIds must not be empty", "MALFORMED_REQUEST")
    run.label_ids.update(label_ids)
    return context.state.create_task("labels", run.id).id


def _task_status(kind: str) -> Resolve:
    def resolve(context: Context, arguments: Mapping[str, Any]) -> dict[str, Any]:
        task_id = _required_str(_object(arguments, "where"), "id")
        context.state.settle_tasks()
        task = context.state.tasks.get(task_id)
        if task is None or task.kind != kind:
            raise GraphQLError(f"Task '{task_id}' not found", "RESOURCE_NOT_FOUND")
        return {"id": task.id, "status": task.status_at(context.state.clock()), "errorMessage": None}

    return resolve


def _existing_model_run(state: SandboxState, model_run_id: str) -> ModelRun:
    try:
        return state.model_run(model_run_id)
    except UnknownModelRun as e:
        raise GraphQLError(f"Model run '{model_run_id}' not found", "RESOURCE_NOT_FOUND") from e


def _object(arguments: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = arguments.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise GraphQLError(f"Argument {key!r} must be an input object", "GRAPHQL_VALIDATION_FAILED", 400)
    return value


def _required_str(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise GraphQLError(f"Field {key!r} of type 'ID!' is required", "GRAPHQL_VALIDATION_FAILED", 400)
    return value


def _str_list(obj: Mapping[str, Any], key: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise GraphQLError(f"Field {key!r} must be a list of IDs", "GRAPHQL_VALIDATION_FAILED", 400)
    return value


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


ROOT_FIELDS: dict[str, RootResolver] = {
    CREATE_IMPORT: RootResolver("create_import", _create_import),
    POLL_IMPORT: RootResolver("poll_import", _poll_import),
    "modelRun": RootResolver("model_run", _model_run),
    "user": RootResolver("user", _user),
    "model": RootResolver("model", _model),
    "ontology": RootResolver("ontology", _ontology),
    "createMEAModelRunDataRowRegistrationTask": RootResolver("register_data_rows", _register_data_rows),
    "createMEAModelRunProjectLabelRegistrationTask": RootResolver(
        "register_labels", _register_project_labels
    ),
    "createMEAModelRunLabelRegistrationTask": RootResolver("register_labels", _register_labels),
    "MEADataRowRegistrationTaskStatus": RootResolver("task_status", _task_status("data_rows")),
    "MEALabelRegistrationTaskStatus": RootResolver("task_status", _task_status("labels")),
}
