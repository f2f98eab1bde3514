"""The HTTP side: ingest (``/webhooks/{tool_id}``), management (``/api/v1``) and health."""
