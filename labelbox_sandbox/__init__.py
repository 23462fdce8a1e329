"""A local Labelbox-compatible server ("sandbox") for `make run`, the tests and the benchmarks.

It speaks the GraphQL operations, multipart upload, import polling and status files of docs/labelbox-api.md,
validates every GraphQL document against Labelbox's schema and every uploaded line as Labelbox reports it
(data-row membership in the model run included), stores accepted predictions per model run by uuid, and
injects faults. It is an oracle for the worker: nothing here imports from the rest of `worker` or from
`schemas`.

Layout (data flows top to bottom; the first six are pure):
- `schema.py`    the SDL of the operations served, written from the Labelbox SDK's query texts
- `graphql.py`   parsing and validation (graphql-core, cached by text); root fields, arguments, selections
- `ontology.py`  does a line fit the model run's ontology (the sandbox's own check)
- `validate.py`  NDJSON line validation → Labelbox-style row errors (and the lean mode's bare reading)
- `faults.py`    fault rules and their counters
- `state.py`     model runs, data-row membership, imports, stored predictions, tasks, request log
- `resolvers.py` the GraphQL root fields over the state
- `transport.py` reading JSON and GraphQL-multipart request bodies
- `app.py`       the HTTP shell: /graphql, files, blobs, auth, faults acted out, request log
- `admin.py`     the /_sandbox/ inspection and control API
- `server.py`    `Sandbox`: start/stop lifecycle;  `__main__.py`: the CLI

Errors a client must recognise (GraphQL error bodies are `{"errors": [{"message", "extensions": {"code"}}],
"data": null}`):
- wrong or missing API key: HTTP 401, code `AUTHENTICATION_ERROR`, message "Invalid API key";
- import name already used in the model run: HTTP 200, code `RESOURCE_CONFLICT`, message
  "Import with name '<name>' already exists in model run '<model run id>'";
- unknown import / model run / task: HTTP 200, code `RESOURCE_NOT_FOUND`;
- bad upload (`contentLength` mismatch, both or neither of `filePayload` / `fileUrl`): HTTP 200,
  `MALFORMED_REQUEST`;
- unreadable request body: HTTP 400, `MALFORMED_REQUEST`; a document that does not parse: HTTP 400,
  `GRAPHQL_PARSE_FAILED`; one the schema refuses (unknown field or argument, undeclared or mistyped
  variable, a variable value that does not fit its type, a missing file part): HTTP 400,
  `GRAPHQL_VALIDATION_FAILED`;
- rate limit (injected): HTTP 429, `Retry-After` in seconds, body `{"message": "You have exceeded …"}`;
- injected: `AUTHORIZATION_ERROR` for a forbidden model run, `INTERNAL_SERVER_ERROR` with
  `extensions.exception.status` 400 for a refused import, and the other kinds of `faults.py`.
"""

from labelbox_sandbox.faults import FaultRule
from labelbox_sandbox.sandbox import Sandbox
from labelbox_sandbox.state import ImportFaults, RequestRecord, SandboxState
from labelbox_sandbox.validate import RowResult, read_import, validate_import, validate_line

__all__ = [
    "FaultRule",
    "ImportFaults",
    "RequestRecord",
    "RowResult",
    "Sandbox",
    "SandboxState",
    "read_import",
    "validate_import",
    "validate_line",
]
