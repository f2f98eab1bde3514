"""The errors a user or an operator can cause, each with a message saying what to do.

Every error raised on purpose derives from :class:`WebhookWorkerError`. Those a request can
cause carry their HTTP answer (``status_code`` and a stable ``code``): the API's exception
handlers turn them into ``{"error": code, "detail": message}`` and nothing else needs to know
the mapping. The CLI prints the same message on one line.

::

    WebhookWorkerError              500 internal_error
    ├── ConfigError                     a bad environment variable or option; stops at start
    ├── SchemaOutOfDateError            the database is behind the code; `webhook-worker migrate`
    ├── RequestError                    the caller can fix it (4xx)
    │   ├── BadRequestError             400 invalid_request, ``field`` names what is wrong
    │   │   └── ToolConfigError         400 invalid_request: an invalid tool definition
    │   ├── NotFoundError               404 not_found: an unknown tool, event or dead letter
    │   └── ConflictError               409 conflict: not in a state that allows it
    └── UnavailableError                503, Retry-After: a dependency is away; try again later
        ├── QueueUnavailableError       503 queue_unavailable
        └── DatabaseUnavailableError    503 database_unavailable
"""

from __future__ import annotations

from typing import ClassVar


class WebhookWorkerError(Exception):
    """Base of every error this package raises on purpose."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    @property
    def detail(self) -> str:
        """What the answer's ``detail`` says: the message, which never holds a secret."""
        return str(self)


class ConfigError(WebhookWorkerError):
    """A setting is missing or malformed. The message names the variable."""


class SchemaOutOfDateError(WebhookWorkerError):
    """The database schema is older than this release expects."""


class RequestError(WebhookWorkerError):
    """Something the caller asked for cannot be done as asked (4xx)."""

    status_code = 400
    code = "invalid_request"


class BadRequestError(RequestError):
    """The request is malformed. ``field`` names the parameter or field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ToolConfigError(BadRequestError):
    """A tool definition is invalid. ``field`` names the offending field."""

    field: str

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", field)
        self.message = message


class NotFoundError(RequestError):
    """The named object does not exist."""

    status_code = 404
    code = "not_found"


class ConflictError(RequestError):
    """The object exists but is not in a state that allows the request (e.g. retrying a dead
    letter that is already being retried)."""

    status_code = 409
    code = "conflict"


class UnavailableError(WebhookWorkerError):
    """A dependency did not answer. Nothing was changed; the same request may succeed later."""

    status_code = 503
    retry_after: ClassVar[int] = 5
    """Seconds a client should wait before trying again (``Retry-After``)."""


class QueueUnavailableError(UnavailableError):
    """The queue backend (Redis or the database) did not answer."""

    code = "queue_unavailable"


class DatabaseUnavailableError(UnavailableError):
    """The database could not be reached (connection refused, lost, timed out). Raised where
    the database driver's errors enter the package (:mod:`webhook_worker.storage.database`),
    so nothing else inspects driver exceptions."""

    code = "database_unavailable"
