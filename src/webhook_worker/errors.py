"""The errors a user or an operator can cause, each with a message saying what to do.

::

    WebhookWorkerError
    ├── ConfigError            a bad environment variable or option; the process stops at start
    ├── ToolConfigError        an invalid tool definition; 400 naming the field
    ├── NotFoundError          an unknown tool, event or dead letter; 404
    ├── SchemaOutOfDateError   the database is behind the code; run `webhook-worker migrate`
    └── QueueUnavailableError  the queue cannot take or hand out messages right now; 503
"""


class WebhookWorkerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(WebhookWorkerError):
    """A setting is missing or malformed. The message names the variable."""


class ToolConfigError(WebhookWorkerError):
    """A tool definition is invalid. ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFoundError(WebhookWorkerError):
    """The named object does not exist."""


class SchemaOutOfDateError(WebhookWorkerError):
    """The database schema is older than this release expects."""


class QueueUnavailableError(WebhookWorkerError):
    """The queue backend (Redis or the database) did not answer."""
