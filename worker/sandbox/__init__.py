"""A local Labelbox-compatible server ("sandbox") for `make run`, the tests and the benchmarks.

It speaks the GraphQL operations, multipart upload, import polling and status files of shared/LABELBOX.md,
validates uploads line by line, stores accepted predictions per model run by uuid, and injects faults.

Layout (data flows top to bottom; the first four are pure):
- `validate.py`  NDJSON line validation → Labelbox-style row errors
- `graphql.py`   just enough GraphQL parsing: root fields, arguments, selections; error bodies
- `faults.py`    fault rules and their counters
- `state.py`     model runs, imports, stored predictions, tasks, request log (injected clock)
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
- bad upload (`contentLength` mismatch, no file part): HTTP 200, code `MALFORMED_REQUEST`;
- unparsable request: HTTP 400, `MALFORMED_REQUEST` or `GRAPHQL_PARSE_FAILED`; unknown field: HTTP 400,
  `GRAPHQL_VALIDATION_FAILED`;
- rate limit (injected): HTTP 429, `Retry-After` in seconds, body `{"message": "You have exceeded …"}`.
"""

from worker.sandbox.faults import FaultRule
from worker.sandbox.server import Sandbox
from worker.sandbox.state import ImportFaults, RequestRecord, SandboxState
from worker.sandbox.validate import RowResult, validate_import, validate_line

__all__ = [
    "FaultRule",
    "ImportFaults",
    "RequestRecord",
    "RowResult",
    "Sandbox",
    "SandboxState",
    "validate_import",
    "validate_line",
]
