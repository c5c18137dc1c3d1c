"""``mailerd relay run``: the relay in processes of its own ([relay] run_in = "process"). Two of
them on one database: one leads, the other takes over when it is killed, nothing is missing; the
leader serves its metrics on [relay] listen and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import asyncpg

from mailerd import config as config_mod
from mailerd.relay import destinations
from tests import relay_schemas
from tests.integration.relay_rows import log_rows, make_campaign
from tests.integration.test_cli_basics import base_env
from tests.kafka_broker import Consumer, Tansu, kafka_section, topic_names


def test_the_daemon_leaves_the_relay_to_relay_processes() -> None:
    kafka = {"bootstrap_servers": ["127.0.0.1:9092"]}
    assert destinations.runs_in_daemon(config_mod.from_mapping({"kafka": kafka}, env={}))
    process = config_mod.from_mapping({"kafka": kafka, "relay": {"run_in": "process"}}, env={})
    assert not destinations.runs_in_daemon(process) and destinations.enabled(process)
    assert not destinations.runs_in_daemon(config_mod.from_mapping({}, env={}))


def write_config(path: Path, dsn: str, node: str, kafka: dict[str, object], listen: str) -> Path:
    servers = ", ".join(f'"{s}"' for s in kafka["bootstrap_servers"])  # type: ignore[attr-defined]
    topics = "\n".join(f'{k} = "{v}"' for k, v in kafka.items() if k.endswith("_topic"))
    path.write_text(
        f"""[database]
dsn = "{dsn}"
[node]
name = "{node}"
[logging]
format = "json"
[relay]
run_in = "process"
listen = "{listen}"
poll_interval_ms = 50
lock_retry_s = 0.2
[kafka]
bootstrap_servers = [{servers}]
{topics}
request_timeout_ms = 5000
""",
        encoding="utf-8",
    )
    return path


async def relay_run(config: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailerd", "relay", "run", "--config", str(config),
            env=base_env(), stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip


async def owner(conn: asyncpg.Connection, within: float = 30) -> str:
    """The node whose relay runs now (once one has taken the position)."""
    async with asyncio.timeout(within):
        while True:
            found = await conn.fetchval("SELECT owner FROM relay_positions WHERE destination = 'kafka'")
            if found:
                return str(found)
            await asyncio.sleep(0.05)


async def metrics_show(url: str, line: str, within: float = 10) -> None:
    """Wait until the metrics page at ``url`` has ``line``."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(within):
        while True:
            async with http.get(url) as response:
                assert response.status == 200
                if line in await response.text():
                    return
            await asyncio.sleep(0.05)


async def test_relay_processes_take_over_from_each_other_and_lose_nothing(
    conn: asyncpg.Connection, dsn: str, broker: Tansu, tmp_path: Path, unused_tcp_port: int
) -> None:
    campaign_id, leads = await make_campaign(conn, 60)
    await log_rows(conn, campaign_id, leads[:30])
    topics = topic_names()
    await broker.create_topics(topics.values())
    kafka = kafka_section(broker, topics)
    listen = f"127.0.0.1:{unused_tcp_port}"
    first = await relay_run(write_config(tmp_path / "a.toml", dsn, "a", kafka, listen), tmp_path / "a.log")
    processes = {"a:relay": first}
    try:
        assert await owner(conn) == "a:relay"  # the only one yet: it leads
        second = await relay_run(write_config(tmp_path / "b.toml", dsn, "b", kafka, ""), tmp_path / "b.log")
        processes["b:relay"] = second
        async with Consumer(broker, topics.values()) as consumer:
            want = {f"email:{campaign_id}:{lead}" for lead in leads[:30]}
            await consumer.until(lambda c: want <= c.ids(), 30)
            published = 'mailerd_relay_records_total{destination="kafka",kind="email"} 30.0'
            await metrics_show(f"http://{listen}/metrics", published)
            first.send_signal(signal.SIGKILL)
            await first.wait()
            await log_rows(conn, campaign_id, leads[30:])
            want = {f"email:{campaign_id}:{lead}" for lead in leads}
            await consumer.until(lambda c: want <= c.ids(), 30)
            assert await owner(conn) == "b:relay"
        relay_schemas.check(consumer.records())
        second.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await second.wait() == 0, (tmp_path / "b.log").read_text()
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.kill()
                await process.wait()
