"""The PromQL of the operations kit (deploy/grafana/mailerd.json, deploy/prometheus/alerts.yml):
every expression, parsed, and the metric names it reads."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import orjson
import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "mailerd.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"

# Series Prometheus makes itself for every target, not exported by the daemon.
SYNTHETIC = frozenset({"up"})

# Grafana's variables, replaced by what they stand for so the query parses as Prometheus sees it.
_GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$job": ".*",
    "$instance": ".*",
}


@functools.cache
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    return loaded


@functools.cache
def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text("utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def grafana_expressions() -> list[str]:
    """The dashboard's queries with the variables substituted, and its variables' queries."""
    exprs = [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert match, variable
            exprs.append(match.group(1))
    for name, value in _GRAFANA_VARIABLES.items():
        exprs = [e.replace(name, value) for e in exprs]
    return exprs


def alert_expressions() -> list[str]:
    return [rule["expr"] for rule in alert_rules()]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (parsing it: a syntax error raises)."""
    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return names


def exported_names(exposition: str) -> set[str]:
    """The series names a /metrics page declares, samples or not (a labelled metric with no
    child yet has only its HELP and TYPE): counters with ``_total`` (and ``_created``),
    histograms with ``_bucket``, ``_sum``, ``_count``."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
