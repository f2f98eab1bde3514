"""The files in deploy/ are valid for their tools and agree with the package and the runbook.

- Prometheus: ``promtool check config``, ``check rules`` and ``test rules`` (the alert unit tests
  in deploy/prometheus/alerts.test.yml); every metric and label an alert uses exists in the
  package's registry; every alert has a severity, a summary and a runbook link to a heading of
  docs/operations.md.
- Grafana: the dashboard parses, its expressions are valid PromQL (promtool checks them as
  recording rules) and use only metrics and labels the package exports.
- Compose: ``docker-compose config`` accepts the file, refuses it without SECRETS_KEY and
  ADMIN_TOKEN, and the services' environments pass the package's own settings validation.
- Kubernetes: the manifests parse, probes point at the right paths and ports, workers get their
  consumer name from the pod name and enough time to stop.
- The image's health check script passes only when /health/live answers 200.

promtool and docker-compose are required (the tests fail, never skip, without them); ``bash
.ci/run`` installs both from Debian packages.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet
from prometheus_client import REGISTRY

import webhook_worker.observability.metrics
import webhook_worker.observability.runtime  # noqa: F401 (registers the runtime metrics)
from webhook_worker.config import Settings, parse_address, parse_duration
from webhook_worker.errors import ConfigError

# Longer than the 120 s each promtool or docker-compose run may take.
pytestmark = [pytest.mark.deploy, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "webhook-worker.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
COMPOSE = DEPLOY / "docker-compose.yml"
KUBERNETES = DEPLOY / "kubernetes"
RUNBOOK = ROOT / "docs" / "operations.md"
RUNBOOK_URL = "https://github.com/webhook-worker/webhook-worker/blob/main/docs/operations.md#"

# Labels Prometheus attaches to every scraped series (the target's), not the package's.
TARGET_LABELS = frozenset({"job", "instance", "pod", "namespace"})
# Series Prometheus makes itself.
SYNTHETIC_SERIES: dict[str, frozenset[str]] = {"up": frozenset()}
PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "start", "end", "atan2"}
)
SEVERITIES = frozenset({"critical", "warning", "info"})
# What the dashboard must show (SPEC "Metrics" and the deployment issue).
DASHBOARD_METRICS = (
    "webhook_events_received_total",
    "webhook_events_processed_total",
    "webhook_event_processing_duration_seconds_bucket",
    "webhook_ingest_request_duration_seconds_bucket",
    "webhook_forward_duration_seconds_bucket",
    "webhook_retry_attempts_total",
    "webhook_dlq_entries_total",
    "webhook_dlq_retries_total",
    "webhook_queue_depth",
    "webhook_queue_scheduled_retries",
    "webhook_queue_oldest_message_age_seconds",
    "webhook_dlq_depth",
    "webhook_memory_allocated_bytes",
    "webhook_memory_limit_bytes",
    "webhook_goroutines_total",
    "webhook_gc_runs_total",
    "webhook_gc_pause_duration_seconds_bucket",
    "webhook_database_pool_in_use",
    "webhook_database_pool_size",
    "webhook_health_checks_total",
    "webhook_deliveries_total",
    "webhook_delivery_duration_seconds_bucket",
    "webhook_destination_backlog",
)
REQUIRED_ALERTS = {
    "WebhookErrorRateHigh": "webhook_events_processed_total",
    "WebhookQueueDepthHigh": "webhook_queue_depth",
    "WebhookDLQGrowing": "webhook_dlq_depth",
    "WebhookMemoryHigh": "webhook_memory_limit_bytes",
    "WebhookDatabasePoolExhausted": "webhook_database_pool_size",
    "WebhookTargetDown": "up",
    "WebhookDestinationFailing": "webhook_deliveries_total",
    "WebhookDestinationBacklogGrowing": "webhook_destination_backlog",
}
# Template variables and what a query's variable stands for when every value is selected.
DASHBOARD_VARIABLES = {"$tool": ".*", "$destination": ".*"}


# ---------------------------------------------------------------------------------------------
# helpers


def _require(tool: str, package: str, alternative: str = "") -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"{tool} is not on PATH, and the deployment checks need it. Install it with "
            f"`apt-get install --no-install-recommends {package}` (Debian/Ubuntu; `bash .ci/run` "
            f"does this){alternative}.",
            pytrace=False,
        )
    return path


def _run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=env, check=False, cwd=ROOT
    )


def _ok(command: list[str], env: dict[str, str] | None = None) -> str:
    result = _run(command, env)
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    return result.stdout


def _promtool(*args: str) -> str:
    promtool = _require(
        "promtool", "prometheus", ", or put a Prometheus release's promtool on PATH"
    )
    return _ok([promtool, *args])


def _compose_command() -> list[str]:
    """docker-compose (v1, what CI installs), else the `docker compose` plugin."""
    if shutil.which("docker-compose") is None:
        docker = shutil.which("docker")
        if docker and _run([docker, "compose", "version"]).returncode == 0:
            return [docker, "compose"]
    hint = ", or install Docker's compose plugin (`docker compose`)"
    return [_require("docker-compose", "docker-compose", hint)]


def _compose_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SECRETS_KEY", "ADMIN_TOKEN")}
    env.update(overrides)
    return env


def _fernet_key() -> str:
    return Fernet.generate_key().decode()


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------
# what the package exports


@functools.cache
def exported_series() -> dict[str, frozenset[str]]:
    """Every series name the process registry can produce (with the suffixes Prometheus text
    format adds per type) mapped to its label names."""
    labels_of: dict[str, frozenset[str]] = {}
    for collector, names in REGISTRY._collector_to_names.items():
        label_names = frozenset(getattr(collector, "_labelnames", ()))
        for name in names:
            labels_of[name] = label_names
    series: dict[str, frozenset[str]] = dict(SYNTHETIC_SERIES)
    for family in REGISTRY.collect():
        base = family.name
        labels = labels_of.get(base, labels_of.get(base + "_total", frozenset()))
        if family.type == "counter":
            series[base + "_total"] = labels
            series[base + "_created"] = labels
        elif family.type == "histogram":
            series[base + "_bucket"] = labels | {"le"}
            for suffix in ("_count", "_sum", "_created"):
                series[base + suffix] = labels
        elif family.type == "summary":
            series[base] = labels | {"quantile"}
            for suffix in ("_count", "_sum", "_created"):
                series[base + suffix] = labels
        elif family.type == "info":
            series[base + "_info"] = labels
        else:
            series[base] = labels
    return series


def test_registry_has_the_spec_metrics() -> None:
    """Guards the checks below: were the package's metrics not registered, every name would be
    reported unknown for the wrong reason."""
    series = exported_series()
    for name in DASHBOARD_METRICS:
        assert name in series, f"{name} is not exported by webhook_worker.observability"
    assert series["webhook_events_processed_total"] == {"event_type", "tool_id", "status"}


# ---------------------------------------------------------------------------------------------
# PromQL: which metrics and labels an expression uses

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?")


@functools.cache
def promql_usage(expr: str) -> tuple[frozenset[str], list[tuple[str | None, set[str]]], set[str]]:
    """``(metric names, [(metric or None, matcher labels)], grouping labels)`` of ``expr``."""
    text = _STRING.sub('""', expr)
    text = _RANGE.sub(" ", text)
    grouping: set[str] = set()
    for match in _GROUPING.finditer(text):
        grouping.update(label.strip() for label in match.group(1).split(",") if label.strip())
    text = _GROUPING.sub(" ", text)
    selectors = [
        (match.group(1), set(_MATCHER.findall(match.group(2))))
        for match in _SELECTOR.finditer(text)
    ]
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    metrics = {
        match.group(1)
        for match in _IDENTIFIER.finditer(text)
        if not match.group(2) and match.group(1).lower() not in PROMQL_KEYWORDS
    }
    return frozenset(metrics), selectors, grouping


def promql_problems(expr: str) -> list[str]:
    """What in ``expr`` the package does not export: unknown metrics and labels."""
    series = exported_series()
    metrics, selectors, grouping = promql_usage(expr)
    problems = [f"unknown metric {name}" for name in sorted(metrics) if name not in series]
    if not metrics:
        problems.append("uses no metric at all")
    known_labels = set(TARGET_LABELS)
    for name in metrics:
        known_labels |= series.get(name, frozenset())
    for selected, labels in selectors:
        allowed = TARGET_LABELS | series.get(selected, frozenset()) if selected else known_labels
        problems += [
            f"{selected or 'a selector'} has no label {label!r}"
            for label in sorted(labels - allowed)
            if not selected or selected in series
        ]
    problems += [
        f"no metric here has the label {label!r}" for label in sorted(grouping - known_labels)
    ]
    return problems


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(rate(webhook_events_received_total[5m]))", None),
        ("rate(webhook_events_recieved_total[5m])", "unknown metric webhook_events_recieved_total"),
        ('webhook_dlq_entries_total{tool_id="x"}', "has no label 'tool_id'"),
        ("sum by (colour) (webhook_queue_depth)", "no metric here has the label 'colour'"),
        (
            "histogram_quantile(0.9, sum by (le) "
            "(rate(webhook_gc_pause_duration_seconds_bucket[1m])))",
            None,
        ),
        ('up{job=~"webhook-worker-.*"} == 0', None),
    ],
)
def test_the_promql_check_catches_mistakes(expr: str, problem: str | None) -> None:
    problems = promql_problems(expr)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


# ---------------------------------------------------------------------------------------------
# Prometheus


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = []
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6}\s+(.*)", line)):
            title = re.sub(r"[`*_]", "", match.group(1)).strip().lower()
            anchors.append(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    duplicates = {anchor for anchor in anchors if anchors.count(anchor) > 1}
    assert not duplicates, f"{path.name} repeats headings {duplicates}: anchors get -1"
    return set(anchors)


def _runbook_anchors() -> set[str]:
    return _anchors(RUNBOOK)


def test_runbook_links_lead_somewhere() -> None:
    """Links from docs/operations.md to its own sections and the other docs' sections."""
    for match in re.finditer(r"\]\(([\w.-]*)#([\w-]+)\)", RUNBOOK.read_text()):
        target = RUNBOOK.parent / (match[1] or RUNBOOK.name)
        assert match[2] in _anchors(target), f"{match[0]}: no such heading in {target.name}"


def test_promtool_accepts_the_config_and_the_rules() -> None:
    assert "SUCCESS" in _promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert "SUCCESS" in _promtool("check", "rules", str(ALERTS))


def test_alerts_fire_when_they_should() -> None:
    """deploy/prometheus/alerts.test.yml: each alert on its situation, and quiet below it."""
    _promtool("test", "rules", str(PROMETHEUS / "alerts.test.yml"))


def test_every_alert_has_unit_tests_firing_and_quiet() -> None:
    """alerts.test.yml checks each alert both ways: on its situation, and below it."""
    cases = [
        case
        for test in _load_yaml(PROMETHEUS / "alerts.test.yml")["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for rule in _alert_rules():
        name = rule["alert"]
        expected = [case["exp_alerts"] for case in cases if case["alertname"] == name]
        assert any(expected), f"no unit test in alerts.test.yml where {name} fires"
        assert [] in expected, f"no unit test in alerts.test.yml where {name} stays quiet"


def test_prometheus_loads_the_alert_rules() -> None:
    config = _load_yaml(PROMETHEUS / "prometheus.yml")
    assert ALERTS.name in config["rule_files"]


def test_every_required_alert_exists() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules() if "alert" in rule}
    for name, metric in REQUIRED_ALERTS.items():
        assert name in rules, f"alerts.yml has no {name}"
        assert metric in promql_usage(rules[name]["expr"])[0], f"{name} does not use {metric}"


def test_every_alert_has_severity_summary_and_a_runbook_section() -> None:
    anchors = _runbook_anchors()
    for rule in _alert_rules():
        name = rule.get("alert")
        assert name, f"alerts.yml should hold alerts only, found {rule}"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{name}: no summary"
        assert annotations.get("description"), f"{name}: no description"
        url = annotations.get("runbook_url", "")
        assert url.startswith(RUNBOOK_URL), f"{name}: runbook_url {url!r}"
        anchor = url.removeprefix(RUNBOOK_URL)
        assert anchor in anchors, f"{name}: docs/operations.md has no heading for #{anchor}"


def test_alert_expressions_use_exported_metrics_and_labels() -> None:
    for rule in _alert_rules():
        assert promql_problems(rule["expr"]) == [], rule["alert"]


# ---------------------------------------------------------------------------------------------
# Grafana


@functools.cache
def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels() -> Iterator[dict[str, Any]]:
    for panel in _dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_exprs() -> list[tuple[str, str]]:
    """``(where, expression)`` for every query: panel targets and template variables."""
    exprs = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in _panels()
        for target in panel.get("targets", [])
    ]
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((\w+)(?:\{([^}]*)\})?,\s*(\w+)\)", query)
            assert match, (
                f"variable {variable['name']}: expected label_values(metric, label) or "
                "label_values(metric{matchers}, label)"
            )
            matchers = ", ".join(m for m in (match[2], f"{match[3]}!=''") if m)
            exprs.append((f"variable {variable['name']}", f"{match[1]}{{{matchers}}}"))
    return exprs


def _as_promql(expr: str) -> str:
    """Grafana's variables replaced by what they stand for at query time."""
    replacements = {"$__rate_interval": "5m", "$__interval": "1m", **DASHBOARD_VARIABLES}
    for variable, value in replacements.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr}"
    return expr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{n}", "expr": _as_promql(expr)}
        for n, (_, expr) in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", str(path))


def test_dashboard_queries_use_exported_metrics_and_labels() -> None:
    problems = {
        where: p for where, expr in _dashboard_exprs() if (p := promql_problems(_as_promql(expr)))
    }
    assert problems == {}


def test_dashboard_shows_every_metric_operators_need() -> None:
    used = set().union(*(promql_usage(_as_promql(e))[0] for _, e in _dashboard_exprs()))
    missing = [name for name in DASHBOARD_METRICS if name not in used]
    assert missing == []


def test_destination_panels_follow_the_tool_and_destination_variables() -> None:
    """Every selector of a metric labelled by destination is filtered by both variables, and
    the destination variable offers the destinations of the selected tools only."""
    destination_metrics = {
        name for name, labels in exported_series().items() if "destination_id" in labels
    }
    filtered = 0
    for where, expr in _dashboard_exprs():
        if where.startswith("variable"):
            continue
        for metric, labels in promql_usage(expr)[1]:
            if metric in destination_metrics:
                assert {"tool_id", "destination_id"} <= labels, f"{where}: {expr}"
                filtered += 1
    assert filtered >= 4, "the Destinations row is missing"
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert set(DASHBOARD_VARIABLES) == {
        f"${name}" for name, v in variables.items() if v["type"] == "query"
    }
    query = variables["destination"]["query"]["query"]
    assert query == 'label_values(webhook_deliveries_total{tool_id=~"$tool"}, destination_id)'


def test_dashboard_uses_the_provisioned_datasource_through_one_variable() -> None:
    dashboard = _dashboard()
    provisioned = {ds["uid"] for ds in _load_yaml(DATASOURCES)["datasources"]}
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    assert variable["current"]["value"] in provisioned
    reference = {"type": "prometheus", "uid": "${" + variable["name"] + "}"}
    ids = []
    for panel in _panels():
        ids.append(panel["id"])
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == reference, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == reference, panel["title"]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert dashboard["uid"] and dashboard["title"]


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    provider = _load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "webhook-worker.yml")
    path = provider["providers"][0]["options"]["path"]
    grafana = _load_yaml(COMPOSE)["services"]["grafana"]
    assert f"./grafana/dashboards:{path}:ro" in grafana["volumes"]


# ---------------------------------------------------------------------------------------------
# docker compose


@functools.cache
def _compose_config() -> dict[str, Any]:
    env = _compose_env(SECRETS_KEY=_fernet_key(), ADMIN_TOKEN="test-admin-token")
    _ok([*_compose_command(), "-f", str(COMPOSE), "config", "-q"], env)
    config: dict[str, Any] = yaml.safe_load(
        _ok([*_compose_command(), "-f", str(COMPOSE), "config"], env)
    )
    return config


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _role(service: dict[str, Any]) -> str | None:
    command = service.get("command") or []
    command = command.split() if isinstance(command, str) else command
    return command[0] if command and service.get("image", "").startswith("webhook-worker") else None


def test_compose_file_is_valid() -> None:
    services = _compose_config()["services"]
    roles = [_role(service) for service in services.values()]
    assert roles.count("migrate") == 1
    assert roles.count("api") == 1
    assert roles.count("worker") >= 2
    assert {"postgres", "redis", "prometheus", "grafana"} <= services.keys()


def test_compose_refuses_to_start_without_secrets() -> None:
    for missing in ("SECRETS_KEY", "ADMIN_TOKEN"):
        present = {"SECRETS_KEY": _fernet_key(), "ADMIN_TOKEN": "t"}
        del present[missing]
        result = _run(
            [*_compose_command(), "-f", str(COMPOSE), "config", "-q"], _compose_env(**present)
        )
        assert result.returncode != 0, f"compose accepted the file without {missing}"
        assert missing in result.stderr + result.stdout


def test_compose_services_are_configured_for_production() -> None:
    services = _compose_config()["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    consumer_names = []
    for name, service in services.items():
        role = _role(service)
        if role is None:
            continue
        env = _environment(service)
        settings = Settings.from_env(env)  # the package's own validation, as at start
        assert settings.uses_redis and not settings.is_embedded, name
        depends = service.get("depends_on", {})
        if role == "migrate":
            assert depends["postgres"]["condition"] == "service_healthy"
            continue
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert "healthcheck" in service and not service["healthcheck"].get("disable"), name
        grace = parse_duration(str(service["stop_grace_period"]))
        assert grace > settings.worker_shutdown_timeout, f"{name}: stop_grace_period too short"
        if role == "worker":
            consumer_names.append(settings.worker_consumer_name)
    assert len(consumer_names) == len(set(consumer_names)), "workers share a consumer name"


def test_prometheus_scrapes_the_api_and_every_worker() -> None:
    services = _compose_config()["services"]
    expected = set()
    for name, service in services.items():
        role = _role(service)
        env = _environment(service)
        if role == "api":
            expected.add(f"{name}:{parse_address(env['API_ADDR'], '')[1]}")
        elif role == "worker":
            expected.add(f"{name}:{parse_address(env['HEALTH_ENDPOINT'], '')[1]}")
    scraped = {
        target
        for job in _load_yaml(PROMETHEUS / "prometheus.yml")["scrape_configs"]
        if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert expected <= scraped
    mounts = services["prometheus"]["volumes"]
    assert any(str(m).startswith("./prometheus:") or "deploy/prometheus" in str(m) for m in mounts)


# ---------------------------------------------------------------------------------------------
# Kubernetes


@functools.cache
def _manifests() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _manifests() if doc["kind"] == kind]


def _config_env() -> dict[str, str]:
    (config_map,) = _of_kind("ConfigMap")
    (secret,) = _of_kind("Secret")
    return {**config_map["data"], **secret["stringData"]}


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in by_name, f"container {container['name']} has no port named {port}"
    return int(by_name[port])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _load_yaml(KUBERNETES / "kustomization.yaml")
    files = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    for document in _manifests():
        assert document["apiVersion"] and document["metadata"]["name"], document


def test_configuration_is_valid_once_the_placeholders_are_replaced() -> None:
    env = _config_env()
    real = {"SECRETS_KEY": _fernet_key(), "ADMIN_TOKEN": "0123456789abcdef0123456789abcdef"}
    for name in real:  # each shipped placeholder alone must not start anything
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({**env, **real, name: env[name]})
    settings = Settings.from_env({**env, **real})
    assert settings.uses_redis and not settings.is_embedded


def test_deployments_probe_health_on_their_listening_port() -> None:
    env = _config_env()
    ports = {
        "api": parse_address(env["API_ADDR"], "")[1],
        "worker": parse_address(env["HEALTH_ENDPOINT"], "")[1],
    }
    roles = {}
    for deployment in _of_kind("Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        role = container["args"][0]
        roles[role] = deployment
        for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, f"{role} {probe}"
            assert _port(container, get["port"]) == ports[role], f"{role} {probe} port"
    assert roles.keys() == {"api", "worker"}
    assert roles["worker"]["spec"]["replicas"] == 3


def test_workers_are_named_after_their_pod_and_may_finish_their_batches() -> None:
    real = {"SECRETS_KEY": _fernet_key(), "ADMIN_TOKEN": "0123456789abcdef0123456789abcdef"}
    shutdown = Settings.from_env(_config_env() | real)
    for deployment in _of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > shutdown.worker_shutdown_timeout
        (container,) = pod["containers"]
        if container["args"] == ["worker"]:
            env = {e["name"]: e for e in container.get("env", [])}
            field = env["WORKER_CONSUMER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == "metadata.name"


def test_every_pod_is_non_root_sized_and_configured() -> None:
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in _manifests()}
    pods = [doc["spec"]["template"] for doc in _of_kind("Deployment") + _of_kind("Job")]
    assert any(p["spec"]["containers"][0]["args"] == ["migrate"] for p in pods), "no migrate Job"
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in pod["spec"]["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), container["name"]
            assert "memory" in resources["limits"], container["name"]
            for source in container["envFrom"]:
                ref = source.get("configMapRef") or source["secretRef"]
                kind = "ConfigMap" if "configMapRef" in source else "Secret"
                assert (kind, ref["name"]) in names, f"{container['name']}: no {kind} {ref['name']}"


def test_the_api_service_reaches_the_api_pods() -> None:
    (service,) = _of_kind("Service")
    (api,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == "webhook-worker-api"]
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = api["spec"]["template"]["spec"]["containers"]
    for port in service["spec"]["ports"]:
        _port(container, port["targetPort"])


# ---------------------------------------------------------------------------------------------
# the image


def test_dockerfile_builds_a_small_non_root_image_for_every_role() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage build expected"
    assert "python:3.11-slim" in text
    user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)[-1]
    assert user.split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["webhook-worker"\]', text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "healthcheck.py" in text
    for setting in ("API_ADDR=0.0.0.0:8080", "HEALTH_ENDPOINT=0.0.0.0:8088", "DATA_DIR="):
        assert setting in text
    allowed = (ROOT / ".dockerignore").read_text().splitlines()
    for source in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"COPY {path}: no such file"
            assert f"!{path.rstrip('/')}" in allowed or f"!{path}/" in allowed, (
                f"COPY {path}: excluded by .dockerignore"
            )


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health/live" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_image_healthcheck_asks_health_live(status: int, healthy: bool) -> None:
    handler = type("Handler", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # As in a worker container: nothing on API_ADDR, the worker on HEALTH_ENDPOINT.
        env = {
            "PATH": os.environ.get("PATH", ""),
            "API_ADDR": f"0.0.0.0:{_free_port()}",
            "HEALTH_ENDPOINT": f"127.0.0.1:{server.server_port}",
            "HTTP_PROXY": f"http://127.0.0.1:{_free_port()}",  # must not be used
            "http_proxy": f"http://127.0.0.1:{_free_port()}",
        }
        result = _run([sys.executable, str(DEPLOY / "healthcheck.py")], env)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr


def test_image_healthcheck_fails_when_nothing_listens() -> None:
    env = {"API_ADDR": f":{_free_port()}", "HEALTH_ENDPOINT": f":{_free_port()}"}
    result = _run([sys.executable, str(DEPLOY / "healthcheck.py")], env)
    assert result.returncode == 1
    assert "unhealthy" in result.stderr
