"""Metrics, logs and (later) traces and health: instrumentation kept out of the pipeline logic."""
