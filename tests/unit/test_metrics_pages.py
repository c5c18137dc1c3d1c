"""What each process's ``/metrics`` page says about its node."""

from __future__ import annotations

import re

import aiohttp

from mailerd import http
from tests import ops_queries


async def test_a_relay_process_does_not_report_a_node_down_or_unready() -> None:
    """A ``mailerd relay run`` process has no readiness nor database probe of its own: exported,
    those gauges read 0 forever, and MailerdNodeNotReady and MailerdDatabaseUnreachable (critical)
    fired for every relay process scraped."""
    runner = await http.start(http.build_relay_app(), "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{http.bound_port(runner)}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            page = await response.text()
    finally:
        await runner.cleanup()
    exported = ops_queries.exported_names(page)
    assert "mailerd_relay_leader" in exported and "mailerd_relay_records_total" in exported
    assert "mailerd_ready" not in exported
    assert "mailerd_database_up" not in exported


async def test_the_dashboard_variables_list_relay_processes_too() -> None:
    """The dashboard's job and node variables are read from a metric: one the relay process
    exports too, or a relay scraped as its own job could not be picked."""
    runner = await http.start(http.build_relay_app(), "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{http.bound_port(runner)}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            exported = ops_queries.exported_names(await response.text())
    finally:
        await runner.cleanup()
    variables = [v for v in ops_queries.dashboard()["templating"]["list"] if v["type"] == "query"]
    assert {v["name"] for v in variables} == {"job", "instance"}
    for variable in variables:
        match = re.fullmatch(r"label_values\((\w+).*", variable["query"]["query"])
        assert match and match.group(1) in exported, variable["query"]["query"]
