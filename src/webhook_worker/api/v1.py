"""``/api/v1`` as a sub-app of its own, mounted by :mod:`webhook_worker.api.app`.

What every management request goes through lives here, once, rather than around each route:

- the access rule (``Authorization: Bearer $ADMIN_TOKEN``; without ADMIN_TOKEN, loopback
  clients that name a loopback Host only), the refusal of browser-driven calls (a cross-site
  ``Origin`` or ``Sec-Fetch-Site``, a body that is not ``application/json``) and of NUL in path
  ids and query values, as middleware that runs before any route;
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
import re
from collections.abc import Sequence
from http import HTTPStatus
from ipaddress import ip_address

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount
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
# Methods whose requests may carry a body, which must then be JSON.
_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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


def mount(path: str, app: Starlette) -> Mount:
    """``app`` mounted at ``path``, for every path below it: Starlette's mount pattern (``.*``)
    stops at a newline, so ``/api/v1/tools/%0A`` would miss the mount and get the outer app's
    plain-text 404 instead of this API's JSON answer."""
    mounted = Mount(path, app=app)
    mounted.path_regex = re.compile(mounted.path_regex.pattern, re.DOTALL)
    return mounted


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
            refused = (
                self._deny(request)
                or _refuse_cross_site(request)
                or _refuse_non_json(request)
                or self._refuse_nul(request)
            )
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _deny(self, request: Request) -> Response | None:
        if self._token is None:
            peer = request.client.host if request.client else ""
            if not _is_loopback(peer):
                return error(
                    403,
                    "forbidden",
                    "the management API answers only loopback clients until ADMIN_TOKEN is set",
                )
            # A page in a browser on this machine can reach loopback under a name of its own
            # that resolves there (DNS rebinding); only a Host naming loopback is ours.
            if not _names_loopback(request.headers.get("host")):
                return error(
                    403,
                    "forbidden",
                    "without ADMIN_TOKEN the management API answers only requests addressed to "
                    "a loopback Host (127.0.0.1, [::1] or localhost)",
                )
            return None
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
        except ClientDisconnect:
            return  # the client left (or the listener cut it off): no one to answer
        except Exception:
            if started:
                raise  # half an answer is out: only the server can end it (and log it)
            log.exception("%s %s failed unexpectedly", scope["method"], scope["path"])
            answer = error(500, "internal_error", "the request could not be processed")
            await answer(scope, receive, send)


def _refuse_cross_site(request: Request) -> Response | None:
    """403 for what a browser sends on behalf of another site's page. A browser adds ``Origin``
    to every cross-origin request but GET and HEAD, and ``Sec-Fetch-Site`` to all of them; other
    clients send neither (or their own origin)."""
    headers = request.headers
    origin = headers.get("origin")
    if headers.get("sec-fetch-site") == "cross-site" or (
        origin is not None and not _same_origin(origin, headers.get("host"))
    ):
        return error(
            403,
            "cross_site_request",
            "the management API does not answer requests made by other sites' pages",
        )
    return None


def _refuse_non_json(request: Request) -> Response | None:
    """415 for a body that is not declared JSON: a browser can send a form or text/plain body
    to any site without asking first, but not application/json."""
    if request.method not in _WITH_BODY:
        return None
    headers = request.headers
    content_type = headers.get("content-type")
    has_body = headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
    if content_type is None and not has_body:
        return None
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type == "application/json":
        return None
    return error(
        415,
        "unsupported_media_type",
        "send the body as JSON with Content-Type: application/json",
    )


def _same_origin(origin: str, host: str | None) -> bool:
    # Compared by host and port: behind a TLS-terminating proxy the scheme this process sees
    # is not the browser's, and a page served from this very host is not a foreign site.
    scheme, sep, rest = origin.lower().partition("://")
    return bool(sep and host) and rest == (host or "").lower() and scheme in ("http", "https")


def _names_loopback(host: str | None) -> bool:
    """True for a Host header naming loopback: 127.0.0.0/8, [::1] or localhost, any port."""
    if not host:
        return False
    name = host.lower()
    if name.startswith("["):
        name, bracket, port = name[1:].partition("]")
        if not bracket or (port and not _is_port(port)):
            return False
    else:
        name, colon, port = name.partition(":")
        if colon and not _is_port(":" + port):
            return False
    return name == "localhost" or _is_loopback(name)


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdecimal() and len(text) <= 6


def _is_loopback(host: str) -> bool:
    # An address only: a name such as "localhost" in the client field would be a forged one.
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
