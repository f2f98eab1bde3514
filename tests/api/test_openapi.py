"""``GET /openapi.json`` describes every route the app serves, with every method."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route

from tests.support import serving
from webhook_worker.api.app import create_app
from webhook_worker.config import Settings
from webhook_worker.runtime import open_runtime


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
