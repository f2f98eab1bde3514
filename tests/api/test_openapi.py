"""``GET /openapi.json`` describes every route the app serves, with every method."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from starlette.routing import BaseRoute, Mount, Route

from tests.support import serving
from webhook_worker.api import openapi
from webhook_worker.api.app import create_app
from webhook_worker.config import Settings
from webhook_worker.errors import ToolConfigError
from webhook_worker.runtime import open_runtime
from webhook_worker.tools.model import parse_tool
from webhook_worker.tools.reference import declared_fields
from webhook_worker.tools.schema import ToolDefinition, ToolView


def _routes(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, Route]]:
    """Every route with its full path, mounted apps' routes included."""
    found: list[tuple[str, Route]] = []
    for route in routes:
        if isinstance(route, Mount):
            found += _routes(route.routes, prefix + route.path)
        else:
            assert isinstance(route, Route)
            found.append((prefix + route.path, route))
    return found


async def test_every_route_and_method_is_described(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    async with open_runtime(settings, migrate_first=True) as runtime:
        app = create_app(runtime)
        served: dict[str, set[str]] = {}
        for path, route in _routes(app.routes):
            if path != "/openapi.json":
                served.setdefault(path, set()).update(
                    m.lower() for m in route.methods or () if m != "HEAD"
                )
        async with serving(runtime) as client:
            response = await client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.1")
    described = {
        path: {m for m in item if m in {"get", "post", "put", "patch", "delete"}}
        for path, item in spec["paths"].items()
    }
    assert described == served
    for path, item in spec["paths"].items():
        for method in described[path]:
            assert item[method]["responses"], f"{method} {path} has no responses"
    # Every $ref points at a schema that exists.
    schemas = spec["components"]["schemas"]
    text = response.text
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in schemas, name


def _resolve(document: dict[str, Any], schema: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The schema of property ``name`` (``*``: any key; ``[]``: any item) of ``schema``,
    following $refs and the branches of anyOf."""
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if name == "*" and isinstance(schema.get("additionalProperties"), dict):
        return dict(schema["additionalProperties"])
    if name == "[]" and isinstance(schema.get("items"), dict):
        return dict(schema["items"])
    if name in schema.get("properties", {}):
        return dict(schema["properties"][name])
    for branch in schema.get("anyOf", []):
        found = _resolve(document, branch, name)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize(
    ("component", "model"),
    [
        ("ToolDefinition", ToolDefinition),
        ("ToolReplacement", ToolDefinition),
        ("Tool", ToolView),
    ],
)
def test_every_declared_tool_field_is_in_the_document(
    component: str, model: type[ToolDefinition]
) -> None:
    spec = openapi.document()
    for path, info in declared_fields(model):
        schema: dict[str, Any] | None = {"$ref": f"#/components/schemas/{component}"}
        steps = path.replace("[]", ".[]").split(".")  # destinations[].url: an item's field
        for name in steps:
            assert schema is not None
            schema = _resolve(spec, schema, name)
        assert schema is not None, f"{component} lacks {path}"
        if path != "id" or component != "ToolReplacement":
            assert schema.get("description") == info.description, path


def test_the_tool_schemas_are_the_declaration_s() -> None:
    spec = openapi.document()
    schemas = spec["components"]["schemas"]
    generated = ToolDefinition.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, schema in generated.pop("$defs").items():
        assert schemas[name] == schema, name
    assert schemas["ToolDefinition"] == generated
    tools, tool = spec["paths"]["/api/v1/tools"], spec["paths"]["/api/v1/tools/{tool_id}"]
    body = "#/components/schemas/{}"
    assert tools["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": body.format("ToolDefinition")
    }
    assert tool["put"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": body.format("ToolReplacement")
    }
    for method in ("get", "put", "patch"):
        answer = tool[method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": body.format("Tool")}


def _validator(component: str) -> Any:
    spec = openapi.document()
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{component}", "components": spec["components"]}
    )


def test_the_schema_accepts_the_definitions_the_server_accepts() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "providers.md"
    blocks = re.findall(r"```json\n(.*?)\n```", page.read_text(encoding="utf-8"), re.DOTALL)
    definitions = [json.loads(block) for block in blocks] + [
        {"id": "t", "event_type": "X-Event", "delivery_id": {"header": ["X-A", "X-B"]}},
        {"id": "t", "forward": {"url": "https://example.com", "method": "put", "timeout": 2.5}},
        {
            "id": "t",
            "retry": {"multiplier": 3, "max_interval": "10m"},
            "rate_limit": {"requests": 5},
        },
        {"id": "t", "events": {"push": {"filter": None}}, "created_at": "2024-01-01T00:00:00Z"},
        {
            "id": "t",
            "mode": "store_and_forward",
            "destinations": [
                {"id": "billing", "url": "https://billing.example.com/in"},
                {
                    "id": "crm.v2",
                    "url": "https://crm.example.com/in",
                    "method": "patch",
                    "headers": {"Authorization": "Bearer t0ken"},
                    "timeout": "2s",
                    "signing_secret": "whsec_c2VjcmV0LWtleQ==",
                    "filter": "type == 'order'",
                    "transform": "{id: id}",
                    "retry": {"max_retries": 2},
                    "enabled": False,
                },
            ],
        },
    ]
    validator = _validator("ToolDefinition")
    for definition in definitions:
        parse_tool(definition)
        assert validator.is_valid(definition), definition


@pytest.mark.parametrize(
    "definition",
    [
        {"provider": "github"},
        {"id": "not ok"},
        {"id": "t", "colour": "red"},
        {"id": "t", "mode": "shout"},
        {"id": "t", "enabled": "yes"},
        {"id": "t", "event_type": {"header": "X-A", "path": "a"}},
        {"id": "t", "forward": {"url": "https://e.com", "method": "GET"}},
        {"id": "t", "forward": {"url": "https://e.com", "headers": {"Bad Name": "v"}}},
        {"id": "t", "retry": {"max_retries": -1}},
        {"id": "t", "rate_limit": {"requests": 0}},
        {"id": "t", "auth": {"type": "kerberos"}},
        {"id": "t", "destinations": {"id": "a", "url": "https://e.com"}},
        {"id": "t", "destinations": [{"url": "https://e.com"}]},
        {"id": "t", "destinations": [{"id": "a"}]},
        {"id": "t", "destinations": [{"id": "-a", "url": "https://e.com"}]},
        {"id": "t", "destinations": [{"id": "a" * 65, "url": "https://e.com"}]},
        {"id": "t", "destinations": [{"id": "a", "url": "https://e.com", "paused": "yes"}]},
        {"id": "t", "destinations": [{"id": "a", "url": "https://e.com", "max_in_flight": 0}]},
        {"id": "t", "destinations": [{"id": "a", "url": "https://e.com", "colour": "red"}]},
        {
            "id": "t",
            "destinations": [{"id": "a", "url": "https://e.com", "rate_limit": {"requests": 0}}],
        },
        {
            "id": "t",
            "destinations": [
                {"id": "a", "url": "https://e.com", "circuit_breaker": {"failure_threshold": 0}}
            ],
        },
        {
            "id": "t",
            "mode": "store_and_forward",
            "forward": {"url": "https://e.com", "paused": True},
        },
        {"id": "t", "destinations": [{"id": "a", "url": "https://e.com", "enabled": "no"}]},
        {"id": "t", "destinations": [{"id": f"d{n}", "url": "https://e.com"} for n in range(33)]},
    ],
)
def test_what_the_schema_refuses_the_server_refuses(definition: dict[str, Any]) -> None:
    assert not _validator("ToolDefinition").is_valid(definition)
    with pytest.raises(ToolConfigError):
        parse_tool(definition)
