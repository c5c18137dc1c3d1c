"""`mailerd campaign ...` commands talk to a running daemon's admin API."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import orjson

from mailerd import config as config_mod
from mailerd.emulator import sink
from tests.integration.helpers import add_leads, run_cli, running_daemon, wait_for_status

TOKEN = "cli-test-token"


async def test_create_show_pause_resume_through_the_api(
    conn: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 300)
    html = tmp_path / "body.html"
    html.write_text("<p>Hello {{ lead.email }}</p>")
    text = tmp_path / "body.txt"
    text.write_text("Hello {{ lead.email }}")
    emulator = sink.Sink()
    port = await emulator.start()
    try:
        config = config_mod.from_mapping(
            {
                "http": {"listen": "127.0.0.1:0"},
                "providers": {"sink": {"kind": "sink", "endpoint": f"http://127.0.0.1:{port}"}},
                "scheduler": {"poll_interval_s": 0.2},
            },
            env={"MAILERD_ADMIN_TOKEN": TOKEN},
        )
        async with running_daemon(config, dsn) as daemon:
            api = ["--url", f"http://127.0.0.1:{daemon.port}", "--token", TOKEN]
            common = [
                "--account",
                "1",
                "--name",
                "cli",
                "--subject",
                "Hi",
                "--html",
                str(html),
                "--text",
                str(text),
                "--from",
                "news@example.com",
                "--provider",
                "sink",
            ]
            segment = '{"field": "attributes.plan", "op": "eq", "value": "pro"}'
            code, out, err = await run_cli(
                "campaign", "create", *api, *common, "--segment", segment, "--json"
            )
            assert code == 0, err
            campaign_id = orjson.loads(out)["id"]
            code, out, err = await run_cli("campaign", "pause", *api, str(campaign_id))
            assert code == 2 and "draft" in err  # not started yet: 409
            code, out, _ = await run_cli("campaign", "start", *api, str(campaign_id))
            assert code == 0 and "scheduled" in out
            info = await wait_for_status(conn, campaign_id)
            code, out, _ = await run_cli("campaign", "show", *api, str(campaign_id), "--json")
            assert code == 0
            assert orjson.loads(out)["sent"] == info["sent"] == 100
            code, _, err = await run_cli(
                "campaign", "resume", *api, str(campaign_id), "--reason", "DKIM fixed"
            )
            assert code == 2 and "finished" in err  # the reason is taken; a finished campaign: 409

            code, _, err = await run_cli(
                "campaign",
                "create",
                *api,
                *common,
                "--segment",
                '{"field": "attributes.plan", "op": "gtt", "value": 1}',
            )
            assert code == 2 and "segment" in err and "gtt" in err
            injected = [*common[: common.index("--from")], "--from", "news@example.com\r\nBcc: x@example.com"]
            injected += common[common.index("--from") + 2 :]
            code, _, err = await run_cli("campaign", "create", *api, *injected, "--segment", segment)
            assert code == 2 and "mailerd campaign create: from: " in err
            code, _, err = await run_cli(
                "campaign",
                "show",
                "--url",
                f"http://127.0.0.1:{daemon.port}",
                "--token",
                "wrong",
                str(campaign_id),
            )
            assert code == 1 and "Bearer" in err

            window = '{"start": "09:00", "end": "25:00"}'
            code, _, err = await run_cli(
                "campaign", "create", *api, *common, "--segment", segment, "--send-window", window
            )
            assert code == 2 and "send_window.end" in err
            window = '{"start": "09:00", "end": "17:00", "days": ["mon"], "default_timezone": "Asia/Tokyo"}'
            code, out, err = await run_cli(
                "campaign", "create", *api, *common, "--segment", segment, "--send-window", window
            )
            assert code == 0, err
            code, out, _ = await run_cli("campaign", "show", *api, out.strip())
            assert (
                code == 0
                and "send window 09:00-17:00 mon (zone: attributes.timezone, else Asia/Tokyo)" in out
            )
            # a number no double holds reaches the API as written (orjson would have rounded it)
            exact = '{"field": "attributes.n", "op": "eq", "value": 123456789012345678901234567890}'
            code, out, err = await run_cli("campaign", "create", *api, *common, "--segment", exact)
            assert code == 0, err
            stored = await conn.fetchval("SELECT segment::text FROM campaigns WHERE id = $1", int(out))
            assert "123456789012345678901234567890" in stored, stored
    finally:
        await emulator.close()
    assert await conn.fetchval("SELECT count(*) FROM campaigns") == 3


async def test_providers_show_and_resume_a_held_provider(conn: asyncpg.Connection, dsn: str) -> None:
    await conn.execute(
        """INSERT INTO provider_holds (provider, signal, reason)
           VALUES ('sink', 'complaint', 'guard: provider sink complaint rate 1% (10 of 1000 sent in 24 h)')"""
    )
    config = config_mod.from_mapping(
        {
            "http": {"listen": "127.0.0.1:0"},
            "providers": {"sink": {"kind": "sink", "endpoint": "http://127.0.0.1:1"}},
        },
        env={"MAILERD_ADMIN_TOKEN": TOKEN},
    )
    async with running_daemon(config, dsn) as daemon:
        api = ["--url", f"http://127.0.0.1:{daemon.port}", "--token", TOKEN]
        code, out, err = await run_cli("providers", "list", *api)
        assert code == 0, err
        assert out.startswith("sink: sent 0 in 24 h") and "HELD since" in out and "complaint rate 1%" in out
        code, out, err = await run_cli("providers", "resume", "sink", *api)
        assert code == 2 and "--reason" in err
        code, out, err = await run_cli(
            "providers", "resume", "sink", "--reason", "cleaned", "--by", "ann", *api
        )
        assert code == 0, err
        assert out.strip() == (
            "provider sink: released (guard: provider sink complaint rate 1% (10 of 1000 sent in 24 h)); "
            "campaigns resumed: none"
        )
        code, out, err = await run_cli("providers", "show", "sink", "--json", *api)
        assert code == 0, err
        shown = orjson.loads(out)
        assert shown["hold"] is None and shown["last_release"]["by"] == "ann"
        code, out, err = await run_cli("providers", "resume", "sink", "--reason", "again", *api)
        assert code == 2 and "not held" in err  # 409, as the campaign commands report it
