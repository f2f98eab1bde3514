"""The ``webhook-worker`` command. Sub-commands live in one module per noun."""

from __future__ import annotations

import sys

import typer

from webhook_worker.cli import bench, destinations, dlq, events, purge, send, serve, tools
from webhook_worker.cli.common import fail
from webhook_worker.errors import WebhookWorkerError

app = typer.Typer(
    name="webhook-worker",
    help="Receive webhooks from any provider and process them reliably.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
serve.register(app)
send.register(app)
bench.register(app)
tools.app.add_typer(destinations.app, name="destinations")
app.add_typer(tools.app, name="tools")
events.app.command()(purge.purge)
app.add_typer(events.app, name="events")
app.add_typer(dlq.app, name="dlq")


def main() -> None:
    try:
        app()
    except WebhookWorkerError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)
