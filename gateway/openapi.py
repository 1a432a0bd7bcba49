"""The OpenAPI 3 document of /v1, built from the pydantic models that validate requests."""
from typing import Any

from pydantic.json_schema import models_json_schema

from gateway.rest.common import MAX_ID
from schema.jobspec import JobSpec

_IDS = r"^[0-9]+(,[0-9]+)*$"

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ID = {"description": "Created", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Id"}}}}
_JOBS = {"description": "Jobs", "content": {"application/json": {"schema": {
    "type": "array", "items": {"$ref": "#/components/schemas/Job"}}}}}
_EMPTY = {"description": "Done", "content": {"application/json": {"schema": {"type": "object"}}}}
_TEXT = {"description": "Bytes from offset on", "content": {"text/plain": {"schema": {"type": "string"}}}}


def _param(name: str, kind: str, where: str = "query", description: str = "", array: bool = False,
           **rules: Any) -> dict:
    schema: dict[str, Any] = {"type": kind, **rules}
    if array:
        schema = {"type": "array", "items": schema}
    param = {"name": name, "in": where, "required": where == "path", "schema": schema, "description": description}
    if array:
        param["explode"] = True
    return param


_JOB_ID = _param("job_id", "integer", "path", minimum=1, maximum=MAX_ID)
_LIST_PARAMS = [
    _param("completed", "boolean", description="only finished jobs, the `num` most recent"),
    _param("num", "integer", description="how many finished jobs with `completed` (-1: all)",
           minimum=-1, maximum=MAX_ID),
    _param("all", "boolean", description="active and finished jobs"),
    _param("status", "string", description="only jobs in this status"),
    _param("constraint", "string", description="key=value: jobs whose label key has this value", array=True),
    _param("name", "string", description="jobs with exactly this name"),
    _param("detail", "boolean", description="include the detail fields"),
    _param("id", "string", description="comma-separated ids", pattern=_IDS),
    _param("workflow", "boolean", description="with id: the jobs of these workflows"),
]
_OUTPUT_PARAMS = [_JOB_ID, _param("offset", "integer", description="byte offset (past the end: nothing)",
                                  minimum=0, maximum=MAX_ID),
                  _param("node", "integer", minimum=0, maximum=MAX_ID)]


def _closed_maps(schema: Any) -> None:
    """Maps whose keys must match a pattern (env, labels) allow no other keys: pydantic leaves
    additionalProperties out, which would let any key through."""
    if isinstance(schema, dict):
        if "patternProperties" in schema:
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            _closed_maps(value)
    elif isinstance(schema, list):
        for value in schema:
            _closed_maps(value)


def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema([(JobSpec, "validation")], ref_template="#/components/schemas/{model}")
    components = schemas["$defs"]
    _closed_maps(components)
    components["Error"] = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    components["Id"] = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
    components["Job"] = {"type": "object", "required": ["id", "status", "name", "tasks", "events"], "properties": {
        "id": {"type": "integer"}, "name": {"type": "string"},
        "status": {"type": "string", "enum": ["idle", "running", "completed", "failed", "deleted", "killed"]},
        "statusReason": {"type": "string"},
        "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
        "events": {"type": "object", "properties": {k: {"type": "integer"} for k in ("createTime", "startTime", "endTime")}},
        "execution": {"type": "object"},
    }}
    errors = {"400": _ERROR, "401": _ERROR, "408": _ERROR}
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "PROMINENCE-compatible batch service", "version": "1"},
        "servers": [{"url": "/v1"}],
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                                             "bearerFormat": "JWT"}}},
        "security": [{"bearer": []}],
        "paths": {
            "/health": {"get": {"security": [], "responses": {"204": {"description": "Healthy"},
                                                              "409": {"description": "Unhealthy"}}}},
            "/jobs": {
                "get": {"parameters": _LIST_PARAMS, "responses": {"200": _JOBS, **errors}},
                "post": {"requestBody": body, "responses": {"201": _ID, **errors}},
                "delete": {"parameters": [_param("id", "string", description="comma-separated ids", pattern=_IDS)],
                           "responses": {"200": _EMPTY, "404": _ERROR, **errors}},
            },
            "/jobs/{job_id}": {
                "get": {"parameters": [_JOB_ID], "responses": {"200": _JOBS, "404": _ERROR, **errors}},
                "delete": {"parameters": [_JOB_ID], "responses": {"200": _EMPTY, "404": _ERROR, **errors}},
            },
            "/jobs/{job_id}/clone": {"put": {"parameters": [_JOB_ID],
                                             "responses": {"201": _ID, "403": _ERROR, "404": _ERROR, **errors}}},
            "/jobs/{job_id}/remove": {"put": {"parameters": [_JOB_ID], "responses": {"200": _EMPTY, "403": _ERROR, **errors}}},
            "/jobs/{job_id}/stdout": {"get": {"parameters": _OUTPUT_PARAMS,
                                              "responses": {"200": _TEXT, "403": _ERROR, "404": _ERROR, **errors}}},
            "/jobs/{job_id}/stderr": {"get": {"parameters": _OUTPUT_PARAMS,
                                              "responses": {"200": _TEXT, "403": _ERROR, "404": _ERROR, **errors}}},
        },
    }
