"""``/api/v1`` as a sub-app of its own, mounted by :mod:`webhook_worker.api.app`.

What every management request goes through lives here, once, rather than around each route:

- the access rule (``Authorization: Bearer $ADMIN_TOKEN``; without ADMIN_TOKEN, loopback
  clients only) and the refusal of NUL in path ids and query values, as middleware that runs
  before any route;
- the exception handlers that turn :class:`~webhook_worker.errors.WebhookWorkerError` into its
  answer (:func:`~webhook_worker.api.responses.error_response`) and Starlette's own 404/405
  into the same JSON shape;
- a last resort that logs anything unexpected with its traceback and answers a bare 500
  ``internal_error``, so no exception text (which may hold a secret) reaches the caller.

Ingest is not mounted here: its fast path never passes through this middleware.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from http import HTTPStatus
from ipaddress import ip_address

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from webhook_worker.api.responses import error, error_response
from webhook_worker.errors import (
    BadRequestError,
    NotFoundError,
    UnavailableError,
    WebhookWorkerError,
)

log = logging.getLogger(__name__)

_NUL = "the NUL character (\\u0000) is not allowed"


def management_app(routes: Sequence[BaseRoute], admin_token: str | None) -> Starlette:
    """The ``/api/v1`` app serving ``routes`` (paths relative to ``/api/v1``)."""
    return Starlette(
        routes=list(routes),
        middleware=[
            # Outermost, so that it also catches what the access check itself might raise.
            Middleware(_InternalErrors),
            Middleware(_Guard, admin_token=admin_token, routes=routes),
        ],
        exception_handlers={WebhookWorkerError: _on_error, HTTPException: on_http_exception},
    )


# The handlers are coroutines because Starlette runs a plain function in a worker thread.


async def _on_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebhookWorkerError)
    if isinstance(exc, UnavailableError):
        log.warning("%s %s: %s", request.method, request.url.path, exc)
    elif exc.status_code >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc, exc_info=exc)
    return error_response(exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's routing answers (no such path, wrong method) in the API's error shape. The
    whole app uses it too: a path the ``/api/v1`` mount does not match (one with a newline, say)
    gets the same JSON answer."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 404:
        detail = f"no {request.url.path!r} here (see /openapi.json)"
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        detail = f"{request.method} is not allowed here; allowed: {allowed}"
    else:
        detail = exc.detail
    code = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return error(status, code, detail, headers=dict(exc.headers or {}))


class _Guard:
    """The access rule, then NUL: no stored id or value holds NUL (PostgreSQL text cannot), so
    a path id with one names nothing (404) and a query value with one is a mistake (400), on
    every backend alike."""

    def __init__(self, app: ASGIApp, admin_token: str | None, routes: Sequence[BaseRoute]) -> None:
        self._app = app
        self._token = admin_token.encode() if admin_token else None
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            refused = self._deny(request) or self._refuse_nul(request)
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _deny(self, request: Request) -> Response | None:
        if self._token is None:
            host = request.client.host if request.client else ""
            if _is_loopback(host):
                return None
            return error(
                403,
                "forbidden",
                "the management API answers only loopback clients until ADMIN_TOKEN is set",
            )
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token):
            return None
        return error(
            401,
            "unauthorized",
            "send Authorization: Bearer <ADMIN_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )

    def _refuse_nul(self, request: Request) -> Response | None:
        # Path parameters exist only once a route matched, which happens after middleware:
        # match here (the route the router will take), and only for a path that holds NUL.
        # No full match is left to the router: 404 for no such path, 405 for a wrong method.
        if "\x00" in request.scope["path"]:
            for route in self._routes:
                matched, child = route.matches(request.scope)
                if matched is Match.FULL:
                    for name, value in child.get("path_params", {}).items():
                        if "\x00" in value:
                            missing = NotFoundError(f"no {name.removesuffix('_id')} {value!r}")
                            return error_response(missing)
                    break
        for name, value in request.query_params.multi_items():
            if "\x00" in name or "\x00" in value:
                return error_response(BadRequestError(f"{name!r}: {_NUL}", name or None))
        return None


class _InternalErrors:
    """Anything unexpected: logged with its traceback, answered 500 ``internal_error`` with a
    fixed message. (Starlette's own error middleware would answer plain text and re-raise.)"""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, receive, sending)
        except Exception:
            if started:
                raise  # half an answer is out: only the server can end it (and log it)
            log.exception("%s %s failed unexpectedly", scope["method"], scope["path"])
            answer = error(500, "internal_error", "the request could not be processed")
            await answer(scope, receive, send)


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
