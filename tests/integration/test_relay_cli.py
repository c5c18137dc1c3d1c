"""``mailerd relay status`` and ``mailerd relay replay`` as subprocesses, against the real broker
and a real callback endpoint."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncpg
import orjson

from mailerd.db import relay as relay_db
from mailerd.relay import records
from tests import relay_schemas
from tests.callback_receiver import Receiver
from tests.integration.relay_rows import NOW, log_rows, make_campaign
from tests.integration.test_cli_basics import base_env, mailerd
from tests.kafka_broker import Consumer, Tansu, topic_names


def write_config(path: Path, dsn: str, broker: Tansu, topics: dict[str, str], receiver: Receiver) -> Path:
    path.write_text(
        f"""[database]
dsn = "{dsn}"
[logging]
format = "json"
[kafka]
bootstrap_servers = ["{broker.bootstrap}"]
email_topic = "{topics["email"]}"
event_topic = "{topics["event"]}"
campaign_topic = "{topics["campaign"]}"
erasure_topic = "{topics["erasure"]}"
request_timeout_ms = 5000
[callbacks.app]
url = "{receiver.url}"
secret_file = "{receiver.secret_file(path.parent)}"
""",
        encoding="utf-8",
    )
    return path


async def test_status_replay_and_dead_letters(
    conn: asyncpg.Connection, dsn: str, broker: Tansu, receiver: Receiver, tmp_path: Path
) -> None:
    campaign_id, leads = await make_campaign(conn, 30)
    other_id, _ = await make_campaign(conn, 0)
    await log_rows(conn, campaign_id, leads[:20])
    await log_rows(conn, other_id, leads[20:])
    topics = topic_names()
    await broker.create_topics(topics.values())
    config = write_config(tmp_path / "mailerd.toml", dsn, broker, topics, receiver)
    env = base_env()

    status = await mailerd("relay", "status", "--json", "--config", str(config), env=env)
    assert status.returncode == 0, status.stderr
    assert [(e["destination"], e["position"]) for e in orjson.loads(status.stdout)] == [
        ("kafka", None),
        ("callbacks.app", None),
    ]

    day = NOW.date().isoformat()
    later = (NOW + dt.timedelta(days=1)).date().isoformat()
    done = await mailerd(
        "relay", "replay", "--destination", "kafka", "--from", day, "--to", later,
        "--campaign", str(campaign_id), "--config", str(config), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "replayed 20 records to kafka" in done.stdout
    async with Consumer(broker, topics.values()) as consumer:
        await consumer.until(lambda c: len(c.ids()) >= 20, 20)
    assert consumer.ids() == {f"email:{campaign_id}:{lead}" for lead in leads[:20]}
    relay_schemas.check(consumer.records())

    letter = records.email(
        tx=0, campaign_id=campaign_id, lead_id=leads[0], status=1, provider_message_id="m", error=None,
        sent_at=NOW, account_id=1, provider="sink", address="user0@example.com",
    )  # fmt: skip
    await relay_db.add_dead_letters(conn, "callbacks.app", [letter], "HTTP 400: no")
    done = await mailerd(
        "relay",
        "replay",
        "--destination",
        "callbacks.app",
        "--dead-letters",
        "--config",
        str(config),
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert receiver.ids() == {letter.id}
    assert await conn.fetchval("SELECT replayed_at IS NOT NULL FROM relay_dead_letters") is True

    unknown = await mailerd(
        "relay", "replay", "--destination", "nope", "--dead-letters", "--config", str(config), env=env
    )
    assert unknown.returncode == 1
    assert "unknown destination 'nope' (configured: kafka, callbacks.app)" in unknown.stderr
