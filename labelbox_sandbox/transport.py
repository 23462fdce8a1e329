"""Reading a GraphQL HTTP request: a JSON body, or a GraphQL multipart request (operations, map, files).

Multipart follows https://github.com/jaydenseric/graphql-multipart-request-spec: the `operations` part is the
JSON body, the `map` part maps each file part's name to the paths (e.g. `variables.file`) where the file
goes; the file then replaces the null at that path, as an `Upload`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from labelbox_sandbox.graphql import GraphQLError, Upload

_MALFORMED = "MALFORMED_REQUEST"


@dataclass(frozen=True)
class GraphQLRequest:
    query: str
    variables: dict[str, Any]
    operation_name: str | None = None


async def read_graphql_request(request: web.Request) -> GraphQLRequest:
    """Read the query and variables, uploads in place. Raises GraphQLError (HTTP 400) if malformed."""
    if request.content_type == "multipart/form-data":
        return await _read_multipart(request)
    try:
        body = json.loads(await request.read())
    except ValueError as e:
        raise GraphQLError("POST body must be a JSON object", _MALFORMED, 400) from e
    return _operation(body)


def _operation(body: Any) -> GraphQLRequest:
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        raise GraphQLError('POST body must be a JSON object with a "query" string', _MALFORMED, 400)
    variables = body.get("variables")
    if variables is None:
        variables = {}
    if not isinstance(variables, dict):
        raise GraphQLError('"variables" must be a JSON object', _MALFORMED, 400)
    operation_name = body.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        raise GraphQLError('"operationName" must be a string', _MALFORMED, 400)
    return GraphQLRequest(query=body["query"], variables=variables, operation_name=operation_name)


async def _read_multipart(request: web.Request) -> GraphQLRequest:
    fields, files = await _read_parts(request)
    try:
        body = json.loads(fields["operations"])
        file_map = json.loads(fields["map"])
    except (KeyError, ValueError) as e:
        raise GraphQLError(
            "multipart request needs JSON parts 'operations' and 'map'", _MALFORMED, 400
        ) from e
    if not isinstance(body, dict) or not isinstance(file_map, dict):
        raise GraphQLError("'operations' and 'map' must be JSON objects", _MALFORMED, 400)
    for part_name, paths in file_map.items():
        _place_upload(body, part_name, paths, files)
    return _operation(body)


async def _read_parts(request: web.Request) -> tuple[dict[str, str], dict[str, Upload]]:
    """Text fields (`operations`, `map`) and file parts, by part name."""
    reader = await request.multipart()
    fields: dict[str, str] = {}
    files: dict[str, Upload] = {}
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or not part.name:
            raise GraphQLError("every multipart part needs a name", _MALFORMED, 400)
        data = bytes(await part.read(decode=False))
        if part.name in ("operations", "map"):
            fields[part.name] = data.decode("utf-8", errors="replace")
        else:
            content_type = part.headers.get("Content-Type", "application/octet-stream")
            files[part.name] = Upload(
                filename=part.filename or part.name, content_type=content_type, data=data
            )
    return fields, files


def _place_upload(body: dict[str, Any], part_name: str, paths: Any, files: dict[str, Upload]) -> None:
    if part_name not in files:
        raise GraphQLError(f"'map' names a file part {part_name!r} that was not sent", _MALFORMED, 400)
    if not isinstance(paths, list):
        raise GraphQLError(f"'map' entry {part_name!r} must be a list of paths", _MALFORMED, 400)
    for path in paths:
        _set_path(body, str(path), files[part_name])


def _set_path(body: dict[str, Any], path: str, upload: Upload) -> None:
    *parents, last = path.split(".")
    target: Any = body
    try:
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = upload
        else:
            target[last] = upload
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise GraphQLError(f"'map' path {path!r} does not exist in 'operations'", _MALFORMED, 400) from e
