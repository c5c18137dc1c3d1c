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


DOCS = tuple(ROOT / "docs" / name for name in ("metrics.md", "guards.md", "runbook.md", "events.md"))


def doc_expressions() -> list[str]:
    """The PromQL of the docs' ```promql blocks: one expression per line at the left margin,
    its continuation lines indented; comment lines and ``   # ...`` tails left out."""
    exprs: list[str] = []
    for path in DOCS:
        for block in re.findall(r"```promql\n(.*?)```", path.read_text("utf-8"), re.S):
            current: list[str] = []
            for line in block.splitlines():
                line = line.split("   #", 1)[0].rstrip()
                if not line.strip() or line.startswith("#") or not line.startswith(" "):
                    if current:
                        exprs.append(" ".join(current))
                    current = []
                if line.strip() and not line.startswith("#"):
                    current.append(line.strip())
            if current:
                exprs.append(" ".join(current))
    return exprs


_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
_TARGET_LABELS = frozenset({"job", "instance"})

Registry = dict[str, tuple[str, frozenset[str]]]  # family name -> type, label names


def _family(name: str, registry: Registry) -> tuple[str, frozenset[str]] | None:
    """(type, labels) of the family a series name belongs to (``le`` for a ``_bucket``)."""
    for family_name, (kind, labels) in registry.items():
        for suffix in _SUFFIXES.get(kind, ("",)):
            if name == family_name + suffix:
                return kind, labels | (frozenset({"le"}) if suffix == "_bucket" else frozenset())
    return None


def _selector_problems(node: promql_parser.VectorSelector, registry: Registry) -> list[str]:
    if node.name in SYNTHETIC:
        return []
    found = _family(node.name or "", registry)
    if found is None:
        return [f"{node.name}: no such series"]
    return [
        f"{node.name} has no label {m.name}"
        for m in node.matchers.matchers
        if m.name not in found[1] | _TARGET_LABELS
    ]


def _call_problems(node: promql_parser.Call, registry: Registry) -> list[str]:
    function = node.func.name
    if function in ("rate", "irate", "increase"):
        name = node.args[0].vector_selector.name or ""
        found = _family(name, registry)
        if found is not None and found[0] not in ("counter", "histogram"):
            return [f"{function}() over {name}, a {found[0]}"]
    if function == "histogram_quantile":
        inner = node.args[1]
        if "_bucket" not in str(inner):
            return ["histogram_quantile() over no _bucket series"]
        if isinstance(inner, promql_parser.AggregateExpr) and (
            inner.modifier is None or "le" not in inner.modifier.labels
        ):
            return ["histogram_quantile() over an aggregation without le"]
    return []


def type_problems(expr: str, registry: Registry) -> list[str]:
    """What ``expr`` reads wrongly, given ``registry``: a metric that does not exist, a label it
    does not have, ``rate()`` or ``increase()`` over something other than a counter (or a
    histogram's series), ``histogram_quantile`` over other than ``_bucket`` or with ``le``
    aggregated away."""
    problems: list[str] = []

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            problems.extend(_selector_problems(node, registry))
        if isinstance(node, promql_parser.Call):
            problems.extend(_call_problems(node, registry))
        return True

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    return problems
