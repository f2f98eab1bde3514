"""``GET /openapi.json``: the OpenAPI 3.1 description of the HTTP API (SPEC "HTTP API")."""

from __future__ import annotations

import copy
from typing import Any

from pydantic.json_schema import models_json_schema

from webhook_worker import __version__
from webhook_worker.storage.events import MAX_SEARCH
from webhook_worker.tools.schema import ToolDefinition, ToolView
from webhook_worker.vocabulary import DeadLetterStatus, DeliveryStatus, EventStatus

_REF_TEMPLATE = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF_TEMPLATE.format(model=name)}


def tool_schemas() -> dict[str, Any]:
    """The tool's components, generated from its declaration (tools/schema.py):
    ``ToolDefinition`` (what POST takes), ``ToolReplacement`` (PUT: the id comes from the URL),
    ``ToolPatch`` (PATCH) and ``Tool`` (what every answer shows: ToolView), with the sections
    and enums they refer to."""
    _, top = models_json_schema(
        [(ToolDefinition, "validation"), (ToolView, "validation")], ref_template=_REF_TEMPLATE
    )
    schemas: dict[str, Any] = top["$defs"]
    # Only the paths refer to the view, so it can keep the component name answers always had.
    schemas["Tool"] = schemas.pop(ToolView.__name__)
    replacement = copy.deepcopy(schemas[ToolDefinition.__name__])
    # Whatever id the body holds is ignored: the URL names the tool.
    replacement["properties"]["id"] = {"description": "Ignored: the URL's tool_id is the id."}
    required = [name for name in replacement.pop("required", []) if name != "id"]
    if required:
        replacement["required"] = required
    replacement["title"] = "ToolReplacement"
    schemas["ToolReplacement"] = replacement
    schemas["ToolPatch"] = {
        "type": "object",
        "description": "A JSON merge patch (RFC 7386) of the stored definition: objects merge, "
        "null removes a field. The result must be a valid ToolDefinition.",
    }
    return schemas


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": {"type": ["string", "null"]},
        },
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


# In a query (and in the bulk retry filter) an empty value means the same as leaving it out, as
# in SPEC's `?tool_id=&event_type=&...`; a parameter that is not listed is refused with 400.
_EMPTY = {"type": "string", "maxLength": 0}
_TIME_FILTER = {"anyOf": [{"type": "string", "format": "date-time"}, _EMPTY]}


def _status_filter(statuses: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "string", "enum": ["", *statuses]}


_PAGING = [
    _query(
        "limit",
        "page size (1-500, default 50)",
        {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 500}, _EMPTY]},
    ),
    _query("cursor", "next_cursor of the previous page"),
    _query("since", "ISO 8601 time, inclusive", _TIME_FILTER),
    _query("until", "ISO 8601 time, exclusive", _TIME_FILTER),
    _query("tool_id", "only this tool"),
    _query("event_type", "only this event type"),
]
_SEARCH = {"type": "string", "maxLength": MAX_SEARCH}
# The filters events have beyond those of every list (since, until, tool_id, event_type).
_EVENT_ONLY_FILTERS = [
    _query(
        "status",
        "pending, processed, ignored, retrying or dead",
        _status_filter(tuple(EventStatus)),
    ),
    _query("delivery_id", "only the event with this delivery id (of its tool)"),
    _query(
        "search",
        "only events whose body contains this text: a substring of the body's bytes (the "
        "text's UTF-8 encoding), case-sensitive, every character literal; it reads the body "
        "of every event the other filters leave, so bound it with since/until",
        _SEARCH,
    ),
]
# The filters of the event list without its paging (the export, the purge).
_EVENT_FILTER_PARAMETERS = [
    *(p for p in _PAGING if p["name"] not in ("limit", "cursor")),
    *_EVENT_ONLY_FILTERS,
]
_COMMON = {
    "401": _error("missing or wrong ADMIN_TOKEN"),
    "403": _error(
        "a request made by another site's page (Origin, Sec-Fetch-Site); without ADMIN_TOKEN, "
        "a client or Host that is not loopback"
    ),
}
_NOT_JSON = {"415": _error("a body without Content-Type: application/json")}
_TIME = {"type": ["string", "null"], "format": "date-time"}


def document() -> dict[str, Any]:
    tool_id, event_id, dlq_id = _path("tool_id"), _path("event_id"), _path("dlq_id")
    ingest = {
        "post": {
            "summary": "Receive a webhook for a tool",
            "parameters": [tool_id],
            "security": [],
            "requestBody": {"required": True, "content": {"*/*": {"schema": {}}}},
            "responses": {
                "202": _json(_ref("Accepted"), "durably enqueued"),
                "200": _json(
                    _ref("Accepted"),
                    "a delivery id already seen (status duplicate), or a handshake answer",
                ),
                "401": _error("bad or missing signature or token, or a timestamp out of tolerance"),
                "403": _error("tool disabled or client address not allowed"),
                "404": _error("unknown tool"),
                "413": _error("body larger than MAX_PAYLOAD_BYTES"),
                "431": _error("headers too large or too many"),
                "429": _error("the tool's rate limit"),
                "503": _error("the queue is unavailable; nothing was enqueued"),
            },
        }
    }
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "webhook-worker", "version": __version__},
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **tool_schemas(),
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {
                        "error": {"type": "string"},
                        "detail": {"type": "string"},
                        "field": {"type": "string"},
                    },
                },
                "Accepted": {
                    "type": "object",
                    "required": ["event_id", "status"],
                    "properties": {
                        "event_id": {"type": "string"},
                        "status": {"enum": ["accepted", "duplicate"]},
                    },
                },
                "Attempt": {
                    "type": "object",
                    "properties": {
                        "attempt": {"type": "integer"},
                        "started_at": _TIME,
                        "duration_ms": {"type": "number"},
                        "outcome": {"type": "string"},
                        "error_class": {"type": ["string", "null"]},
                        "error": {"type": ["string", "null"]},
                        "http_status": {"type": ["integer", "null"]},
                        "destination_id": {
                            "type": ["string", "null"],
                            "description": "the destination delivered to; null for the "
                            "event's own processing",
                        },
                    },
                },
                "Delivery": {
                    "type": "object",
                    "required": ["destination_id", "status", "attempts"],
                    "properties": {
                        "destination_id": {"type": "string"},
                        "status": {"enum": list(DeliveryStatus)},
                        "attempt_count": {"type": "integer"},
                        "next_attempt_at": _TIME,
                        "updated_at": _TIME,
                        "attempts": {"type": "array", "items": _ref("Attempt")},
                    },
                },
                "Event": {
                    "type": "object",
                    "required": ["id", "tool_id", "status", "received_at", "attempts"],
                    "properties": {
                        "id": {"type": "string"},
                        "tool_id": {"type": "string"},
                        "event_type": {"type": ["string", "null"]},
                        "delivery_id": {"type": "string"},
                        "status": {"enum": list(EventStatus)},
                        "received_at": _TIME,
                        "processed_at": _TIME,
                        "payload": {},
                        "raw_payload": {},
                        "headers": {"type": "object"},
                        "attempts": {"type": "array", "items": _ref("Attempt")},
                        "deliveries": {"type": "array", "items": _ref("Delivery")},
                    },
                },
                "DeadLetter": {
                    "type": "object",
                    "required": ["id", "event_id", "status"],
                    "properties": {
                        "id": {"type": "string"},
                        "event_id": {"type": "string"},
                        "destination_id": {
                            "type": ["string", "null"],
                            "description": "the destination whose delivery failed; null when "
                            "the event itself failed",
                        },
                        "tool_id": {"type": "string"},
                        "event_type": {"type": ["string", "null"]},
                        "error": {"type": "string"},
                        "error_class": {"type": "string"},
                        "retryable": {"type": "boolean"},
                        "retry_count": {"type": "integer"},
                        "status": {"enum": list(DeadLetterStatus)},
                        "created_at": _TIME,
                        "last_retry_at": _TIME,
                        "next_retry_at": _TIME,
                        "event": _ref("Event"),
                    },
                },
                "DeadLetterFilter": {
                    "type": "object",
                    "description": "empty or null values mean no filter",
                    "properties": {
                        "tool_id": {"type": ["string", "null"]},
                        "event_type": {"type": ["string", "null"]},
                        "error_class": {"type": ["string", "null"]},
                        "status": {"enum": ["pending", "", None]},
                        "since": {"anyOf": [_TIME_FILTER, {"type": "null"}]},
                        "until": {"anyOf": [_TIME_FILTER, {"type": "null"}]},
                        "destination_id": {"type": ["string", "null"]},
                        "dry_run": {
                            "type": "boolean",
                            "description": "count what would be retried, change nothing",
                        },
                    },
                    "additionalProperties": False,
                },
                "EventReplay": {
                    "type": "object",
                    "description": "which events to replay; empty or null values mean no filter",
                    "properties": {
                        "tool_id": {"type": ["string", "null"]},
                        "event_type": {"type": ["string", "null"]},
                        "status": {"enum": [*EventStatus, "", None]},
                        "since": {"anyOf": [_TIME_FILTER, {"type": "null"}]},
                        "until": {"anyOf": [_TIME_FILTER, {"type": "null"}]},
                        "delivery_id": {"type": ["string", "null"]},
                        "search": {
                            "anyOf": [_SEARCH, {"type": "null"}],
                            "description": "text the body contains (as in the list)",
                        },
                        "destination_id": {
                            "type": ["string", "null"],
                            "description": "replay to this destination only (needs tool_id)",
                        },
                        "dry_run": {
                            "type": "boolean",
                            "description": "count the matching events, change nothing",
                        },
                    },
                    "additionalProperties": False,
                },
                "Purged": {
                    "type": "object",
                    "description": "deleted, or with dry_run, matched",
                    "properties": {
                        "deleted": {"type": "integer"},
                        "matched": {"type": "integer"},
                    },
                    "minProperties": 1,
                    "maxProperties": 1,
                },
                "Counted": {
                    "type": "object",
                    "description": "requeued, or with dry_run, matched",
                    "properties": {
                        "requeued": {"type": "integer"},
                        "matched": {"type": "integer"},
                    },
                    "minProperties": 1,
                    "maxProperties": 1,
                },
            },
        },
        "security": [{"admin": []}],
        "paths": {
            "/webhooks/{tool_id}": ingest,
            "/api/webhooks/tools/{tool_id}": ingest,
            "/api/v1/tools": {
                "get": {
                    "summary": "List tools",
                    "responses": {"200": _json(_page("Tool"), "tools"), **_COMMON},
                },
                "post": {
                    "summary": "Create a tool",
                    "requestBody": _json(_ref("ToolDefinition"), "definition"),
                    "responses": {
                        "201": _json(_ref("Tool"), "created"),
                        "400": _error("invalid; names the field"),
                        **_COMMON,
                    },
                },
            },
            "/api/v1/tools/{tool_id}": {
                "parameters": [tool_id],
                "get": {
                    "summary": "Show a tool (secrets redacted)",
                    "responses": {
                        "200": _json(_ref("Tool"), "tool"),
                        "404": _error("unknown"),
                        **_COMMON,
                    },
                },
                "put": {
                    "summary": "Replace a tool",
                    "requestBody": _json(_ref("ToolReplacement"), "definition"),
                    "responses": {
                        "200": _json(_ref("Tool"), "replaced"),
                        "400": _error("invalid"),
                        "404": _error("unknown"),
                        **_COMMON,
                    },
                },
                "patch": {
                    "summary": "Change a tool (JSON merge patch)",
                    "requestBody": _json(_ref("ToolPatch"), "patch"),
                    "responses": {
                        "200": _json(_ref("Tool"), "changed"),
                        "400": _error("invalid"),
                        "404": _error("unknown"),
                        **_COMMON,
                    },
                },
                "delete": {
                    "summary": "Remove a tool",
                    "responses": {
                        "204": {"description": "removed"},
                        "404": _error("unknown"),
                        **_COMMON,
                    },
                },
            },
            **_destination_control(tool_id),
            "/api/v1/events": {
                "get": {
                    "summary": "List events, newest first",
                    "parameters": [*_PAGING, *_EVENT_ONLY_FILTERS],
                    "responses": {
                        "200": _json(_page("Event"), "events"),
                        "400": _error("bad filter"),
                        **_COMMON,
                    },
                },
                "delete": {
                    "summary": "Delete every event matching the filters (at least one)",
                    "description": "Erases each matching event with its attempts, deliveries, "
                    "dead letters and de-duplication key (so its delivery id is accepted as new "
                    "when sent again), in chunks of 500 events, one transaction each. Events "
                    "received after the request began are left alone. `dry_run=true` counts "
                    "the events instead; on the same data the count equals what is deleted. "
                    "See docs/operations.md, Data lifecycle, for what remains elsewhere.",
                    "parameters": [
                        *_EVENT_FILTER_PARAMETERS,
                        _query(
                            "dry_run",
                            "true: count the matching events, delete nothing",
                            {"type": "string", "enum": ["", "true", "false"]},
                        ),
                    ],
                    "responses": {
                        "200": _json(_ref("Purged"), "how many were deleted, or matched"),
                        "400": _error("no filter, or a bad one"),
                        "503": _error("database or queue unavailable"),
                        **_COMMON,
                    },
                },
            },
            "/api/v1/events/export": {
                "get": {
                    "summary": "Every event matching the list's filters, oldest first, as NDJSON",
                    "description": "One event per line, as GET /api/v1/events/{event_id} shows "
                    "it, streamed in batches; events received after the export started are "
                    "left out.",
                    "parameters": _EVENT_FILTER_PARAMETERS,
                    "responses": {
                        "200": {
                            "description": "one JSON event per line",
                            "content": {
                                "application/x-ndjson": {
                                    "schema": {
                                        "type": "string",
                                        "description": "lines, each an Event",
                                    }
                                }
                            },
                        },
                        "400": _error("bad filter"),
                        **_COMMON,
                    },
                }
            },
            "/api/v1/events/{event_id}": {
                "get": {
                    "summary": "Show an event with every attempt",
                    "parameters": [event_id],
                    "responses": {
                        "200": _json(_ref("Event"), "event"),
                        "404": _error("unknown"),
                        **_COMMON,
                    },
                }
            },
            "/api/v1/events/replay": {
                "post": {
                    "summary": "Replay every event matching a filter (to one destination or all)",
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _ref("EventReplay")}},
                    },
                    "responses": {
                        "200": _json(_ref("Counted"), "how many were requeued, or matched"),
                        "400": _error("bad filter, or a destination the tool does not have"),
                        "404": _error("unknown tool (with destination_id)"),
                        "503": _error("queue unavailable"),
                        **_COMMON,
                    },
                }
            },
            "/api/v1/events/{event_id}/replay": {
                "post": {
                    "summary": "Process an event again: every delivery, or one destination's",
                    "parameters": [event_id],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"destination_id": {"type": ["string", "null"]}},
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json({"type": "object"}, "requeued"),
                        "400": _error("a destination the event's tool does not have"),
                        "404": _error("unknown"),
                        "503": _error("queue unavailable"),
                        **_COMMON,
                    },
                }
            },
            "/api/v1/dlq": {
                "get": {
                    "summary": "List dead letters, newest first",
                    "parameters": [
                        *_PAGING,
                        _query("error_class", "only this error class"),
                        _query("destination_id", "only this destination's dead letters"),
                        _query(
                            "status",
                            "pending, retrying, resolved or discarded",
                            _status_filter(tuple(DeadLetterStatus)),
                        ),
                    ],
                    "responses": {
                        "200": _json(_page("DeadLetter"), "dead letters"),
                        "400": _error("bad filter"),
                        **_COMMON,
                    },
                }
            },
            "/api/v1/dlq/retry": {
                "post": {
                    "summary": "Retry every pending dead letter matching a filter",
                    "requestBody": {
                        "required": False,
                        "content": {"application/json": {"schema": _ref("DeadLetterFilter")}},
                    },
                    "responses": {
                        "200": _json(_ref("Counted"), "how many were requeued, or matched"),
                        "400": _error("bad filter"),
                        "503": _error("queue unavailable"),
                        **_COMMON,
                    },
                }
            },
            "/api/v1/dlq/{dlq_id}": {
                "parameters": [dlq_id],
                "get": {
                    "summary": "Show a dead letter with its event",
                    "responses": {
                        "200": _json(_ref("DeadLetter"), "dead letter"),
                        "404": _error("unknown"),
                        **_COMMON,
                    },
                },
                "delete": {
                    "summary": "Discard a dead letter",
                    "responses": {
                        "200": _json(_ref("DeadLetter"), "discarded"),
                        "404": _error("unknown"),
                        **_COMMON,
                    },
                },
            },
            "/api/v1/dlq/{dlq_id}/retry": {
                "post": {
                    "summary": "Retry one dead letter",
                    "parameters": [dlq_id],
                    "responses": {
                        "202": _json(_ref("DeadLetter"), "sent back"),
                        "404": _error("unknown"),
                        "409": _error("not pending or discarded"),
                        "503": _error("queue unavailable"),
                        **_COMMON,
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Health in the SPEC shape",
                    "security": [],
                    "responses": {
                        "200": {"description": "healthy or degraded"},
                        "503": {"description": "unhealthy"},
                    },
                }
            },
            "/health/live": {
                "get": {
                    "summary": "The process answers",
                    "security": [],
                    "responses": {"200": {"description": "alive"}},
                }
            },
            "/health/ready": {
                "get": {
                    "summary": "Database, queue and schema ready",
                    "security": [],
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
        },
    }
    return _refusing_non_json(spec)


_PAUSE_WAIT = (
    "It answers once every worker has re-read its tools (after TOOLS_REFRESH_INTERVAL plus a "
    "quarter of a second)"
)


def _destination_control(tool_id: dict[str, Any]) -> dict[str, Any]:
    """Pause and resume of one destination."""
    destination_id = _path("destination_id")

    def state(paused: bool, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["tool_id", "destination_id", "paused", *extra],
            "properties": {
                "tool_id": {"type": "string"},
                "destination_id": {"type": "string"},
                "paused": {"const": paused},
                **extra,
            },
        }

    failures = {
        "404": _error("unknown tool, or a destination the tool does not have"),
        "409": _error("the destination is the tool's `forward` (declare it in destinations)"),
        **_COMMON,
    }
    return {
        "/api/v1/tools/{tool_id}/destinations/{destination_id}/pause": {
            "parameters": [tool_id, destination_id],
            "post": {
                "summary": "Pause one destination: its deliveries wait until it is resumed",
                "description": f"Deliveries to it wait with status `paused`, neither attempted "
                f"nor dead-lettered. {_PAUSE_WAIT}; workers check `paused` right before each "
                "send, so once it answers no new delivery starts there (one already under way "
                "finishes). Idempotent.",
                "responses": {"200": _json(state(True, {}), "paused"), **failures},
            },
        },
        "/api/v1/tools/{tool_id}/destinations/{destination_id}/resume": {
            "parameters": [tool_id, destination_id],
            "post": {
                "summary": "Resume one destination and send what waited, oldest first",
                "description": f"{_PAUSE_WAIT}; then the deliveries that waited are sent again "
                "in the order their events were received (`requeued` counts them). Idempotent.",
                "responses": {
                    "200": _json(
                        state(False, {"requeued": {"type": "integer", "minimum": 0}}),
                        "resumed",
                    ),
                    "503": _error("queue unavailable"),
                    **failures,
                },
            },
        },
    }


def _refusing_non_json(spec: dict[str, Any]) -> dict[str, Any]:
    """Every management operation that may carry a body answers 415 to one that is not JSON."""
    for path, item in spec["paths"].items():
        if path.startswith("/api/v1/"):
            for method in ("post", "put", "patch", "delete"):
                if method in item:
                    item[method]["responses"].update(_NOT_JSON)
    return spec
