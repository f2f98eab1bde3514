"""The Starlette application: ingest, management, health and metrics routes, and the lifespan
that starts and stops the runtime's background parts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from webhook_worker.api import openapi, v1
from webhook_worker.api.ingest import IngestHandler
from webhook_worker.api.management import ManagementAPI
from webhook_worker.api.responses import JSONResponse, error
from webhook_worker.observability import runtime as process_metrics
from webhook_worker.observability.health import Gauges, Health
from webhook_worker.runtime import Runtime
from webhook_worker.storage.deadletters import DeadLetterStore

log = logging.getLogger(__name__)


def create_app(runtime: Runtime) -> Starlette:
    settings = runtime.settings
    system, destination = runtime.queue_destination()
    ingest = IngestHandler(
        runtime.tools,
        runtime.batcher,
        settings.max_payload_bytes,
        settings.trusted_proxies,
        messaging_system=system,
        destination=destination,
    )
    management = ManagementAPI(
        runtime.tool_service,
        runtime.events,
        DeadLetterStore(runtime.db),
        runtime.replayer,
        refresh_interval=settings.tools_refresh_interval,
        db=runtime.db,
        queue=runtime.queue,
        replay_keys=runtime.tools.replay_keys,
    )
    routes = [
        Route("/webhooks/{tool_id}", ingest.handle, methods=["POST"]),
        Route("/api/webhooks/tools/{tool_id}", ingest.handle, methods=["POST"]),
        v1.mount("/api/v1", v1.management_app(management.routes(), settings.admin_token)),
        *health_routes(runtime),
        Route("/openapi.json", _openapi, methods=["GET"], include_in_schema=False),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if settings.admin_token is None:
            log.warning(
                "ADMIN_TOKEN is not set: the management API (/api/v1) answers loopback clients "
                "only; set ADMIN_TOKEN to manage tools and events from elsewhere"
            )
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    return _WebhookApp(
        ingest,
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: v1.on_http_exception},
    )


_INGEST_PREFIXES = ("/webhooks/", "/api/webhooks/tools/")


class _WebhookApp(Starlette):
    """The app, with a short way in for ingest: ``POST /webhooks/{tool_id}`` goes straight to
    the handler, past Starlette's middleware stack and its route-by-route matching. That is
    about a fifth of the API's CPU per webhook (docs/performance.md); every other request, and
    the lifespan, takes the usual way through the same routes."""

    def __init__(self, ingest: IngestHandler, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ingest = ingest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            for prefix in _INGEST_PREFIXES:
                if path.startswith(prefix):
                    tool_id = path[len(prefix) :]
                    if tool_id and "/" not in tool_id:
                        await self._ingest_directly(scope, receive, send, tool_id)
                        return
        await super().__call__(scope, receive, send)

    async def _ingest_directly(
        self, scope: Scope, receive: Receive, send: Send, tool_id: str
    ) -> None:
        scope["app"] = self
        scope["path_params"] = {"tool_id": tool_id}
        try:
            response = await self._ingest.handle(Request(scope, receive))
        except ClientDisconnect:
            return  # the sender left, or the listener cut off a body that never came
        except Exception:
            # What Starlette's error middleware would do: log it, answer a plain 500.
            log.exception("ingest failed unexpectedly")
            response = error(500, "internal_error", "the request could not be processed")
        await response(scope, receive, send)


_OPENAPI = orjson.dumps(openapi.document())


async def _openapi(request: Request) -> Response:
    return Response(_OPENAPI, media_type="application/json")


def health_routes(runtime: Runtime) -> list[Route]:
    """``/health``, ``/health/live``, ``/health/ready`` and ``/metrics`` (API and worker)."""
    settings = runtime.settings
    health = Health(runtime.db, runtime.queue, settings.uses_redis, settings.health)
    gauges = Gauges(runtime.db, runtime.queue, settings.health.check_timeout, gate=runtime.gate)
    process_metrics.install_gc_hooks()

    async def full(request: Request) -> Response:
        status, body = await health.report()
        return JSONResponse(body, status_code=status)

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        ok, detail = await health.ready()
        return JSONResponse(
            {"status": "ready" if ok else "not_ready", "components": detail},
            status_code=200 if ok else 503,
        )

    async def metrics(request: Request) -> Response:
        await gauges.refresh()
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/health", full, methods=["GET"]),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def health_app(runtime: Runtime) -> Starlette:
    """What a worker serves on HEALTH_ENDPOINT."""
    return Starlette(routes=health_routes(runtime))
