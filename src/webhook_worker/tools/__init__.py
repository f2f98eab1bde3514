"""Tools: one configured integration each (a provider, its auth, how events are extracted and
processed). Defined at run time through the API or CLI, never in code."""

from webhook_worker.tools.model import (
    DEFAULT_DESTINATION,
    MODES,
    PROVIDERS,
    AuthConfig,
    Destination,
    FieldSource,
    ForwardConfig,
    Tool,
    parse_tool,
)

__all__ = [
    "DEFAULT_DESTINATION",
    "MODES",
    "PROVIDERS",
    "AuthConfig",
    "Destination",
    "FieldSource",
    "ForwardConfig",
    "Tool",
    "parse_tool",
]
