"""The operations kit as shipped: the Grafana dashboard has the structure Grafana imports, every
PromQL expression parses, every alert has a summary and a runbook link to a section that exists,
and promtool (where installed) accepts the rules and passes their unit tests."""

from __future__ import annotations

import re
import shutil
import subprocess

import prometheus_client
import pytest

import mailerd.metrics  # noqa: F401  (defines the metrics in the default registry)
from tests import ops_queries

PANEL_TYPES = frozenset({"row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"})
GRID_COLUMNS = 24


def _github_anchors(markdown: str) -> set[str]:
    """Heading anchors as GitHub renders them: lower case, punctuation dropped, spaces to '-'."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            text = match.group(1).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_the_dashboard_has_what_grafana_imports() -> None:
    board = ops_queries.dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = ops_queries.dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}"


def test_every_dashboard_query_parses() -> None:
    exprs = ops_queries.grafana_expressions()
    assert len(exprs) > 30
    names = set().union(*(ops_queries.metric_names(e) for e in exprs))
    assert {"mailerd_emails_total", "mailerd_relay_lag_seconds", "mailerd_shards_claimed"} <= names


def test_every_alert_parses_and_links_to_a_runbook_section() -> None:
    anchors = _github_anchors(ops_queries.RUNBOOK.read_text("utf-8"))
    rules = ops_queries.alert_rules()
    assert len({r["alert"] for r in rules}) == len(rules)
    for rule in rules:
        assert ops_queries.metric_names(rule["expr"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"], rule["alert"]
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("https://github.com/mailerd/mailerd/blob/main/docs/runbook.md#"), url
        assert url.split("#", 1)[1] in anchors, f"{rule['alert']}: no such runbook section"


def test_a_broken_expression_does_not_parse() -> None:
    with pytest.raises(ValueError, match=r".+"):
        ops_queries.metric_names("sum by (provider (rate(mailerd_emails_total[5m]))")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    for args in (["check", "rules", str(ops_queries.ALERTS)], ["test", "rules", "alerts.test.yml"]):
        done = subprocess.run(
            ["promtool", *args], cwd=ops_queries.ALERTS.parent, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


def _registry() -> ops_queries.Registry:
    """Every family of the default registry once mailerd's metrics are defined: type, labels."""
    found = {}
    for collector in set(prometheus_client.REGISTRY._names_to_collectors.values()):
        for family in collector.collect():
            labels = getattr(collector, "_labelnames", ())
            found[family.name] = (family.type, frozenset(labels))
    return found


def test_every_query_reads_its_metrics_by_their_type_and_labels() -> None:
    """The dashboard, the alerts and the queries the docs offer: each name and label exists, rate()
    and increase() read counters, histogram_quantile() reads buckets by le."""
    registry = _registry()
    assert registry["mailerd_emails"] == ("counter", frozenset({"provider", "status"}))
    doc_exprs = ops_queries.doc_expressions()
    assert len(doc_exprs) > 20
    for source, exprs in (
        ("dashboard", ops_queries.grafana_expressions()),
        ("alerts", ops_queries.alert_expressions()),
        ("docs", doc_exprs),
    ):
        for expr in exprs:
            assert not ops_queries.type_problems(expr, registry), f"{source}: {expr}"


def test_the_type_check_finds_what_it_looks_for() -> None:
    registry = _registry()
    assert ops_queries.type_problems("rate(mailerd_writer_buffer_rows[5m])", registry) == [
        "rate() over mailerd_writer_buffer_rows, a gauge"
    ]
    assert ops_queries.type_problems('mailerd_campaigns{provider="x"}', registry) == [
        "mailerd_campaigns has no label provider"
    ]
    assert ops_queries.type_problems(
        "histogram_quantile(0.9, sum by (provider) (rate(mailerd_provider_call_seconds_bucket[5m])))",
        registry,
    ) == ["histogram_quantile() over an aggregation without le"]
    assert ops_queries.type_problems("mailerd_emails", registry) == ["mailerd_emails: no such series"]
