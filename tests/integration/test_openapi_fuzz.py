"""The OpenAPI document is complete and true: schemathesis fuzzes a live daemon against it.

A real daemon (real Postgres, the sink provider) serves the document it derives from its
bodies; schemathesis loads it from ``/api/openapi.json`` and sends a bounded, deterministic
number of generated requests to every operation, valid and invalid ones. Every answer must be
no 5xx, a documented status, a documented content type, and a body that matches its schema;
methods a path does not have must answer 405 with a true ``Allow`` header.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import asyncpg

from mailerd import campaigns
from mailerd import config as config_mod
from mailerd.emulator import sink
from mailerd.http import openapi, routes
from tests.integration.helpers import add_leads, new_campaign, running_daemon

TOKEN = "fuzz-token"
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
)


async def test_every_answer_matches_the_document(
    conn: asyncpg.Connection, dsn: str, reports_dsn: str, tmp_path: Path
) -> None:
    await add_leads(conn, 1, 30)
    emulator = sink.Sink()
    port = await emulator.start()
    try:
        config = config_mod.from_mapping(
            {
                "http": {"listen": "127.0.0.1:0", "max_body_bytes": 65536},
                # named as in the document's example campaign, so that example is created (201)
                "providers": {"ses": {"kind": "sink", "endpoint": f"http://127.0.0.1:{port}"}},
                "scheduler": {"poll_interval_s": 0.2},
                # the report endpoints answer from a reports database (503 without one)
                "reports": {"dsn": reports_dsn},
            },
            env={"MAILERD_ADMIN_TOKEN": TOKEN},
        )
        # campaign 1, the documented example id, so its routes answer 200 as well as 404
        await campaigns.create(conn, new_campaign(start=False, provider="ses"), config)
        async with running_daemon(config, dsn) as daemon:
            code, output = await _schemathesis(daemon.port, tmp_path)
    finally:
        await emulator.close()
    print(output)  # shown with -s, and on failure
    assert code == 0, output[-20_000:]
    # Every operation was tested (schemathesis leaves out the one that served it the document).
    documented = sum(len(methods) for methods in openapi.document(routes.ROUTES)["paths"].values())
    counted = re.search(r"Operations:\s+(\d+) selected / (\d+) total", output)
    assert counted is not None and counted[1] == counted[2]
    assert int(counted[2]) >= documented - 1


async def _schemathesis(port: int, workdir: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"http://127.0.0.1:{port}/api/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--mode",
        "all",
        "--max-examples",
        "20",
        "--generation-deterministic",  # the same requests every run; no example database
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        cwd=workdir,  # no schemathesis.toml of the caller's is picked up
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")},
            "NO_COLOR": "1",
            "SCHEMATHESIS_HOOKS": str(HOOKS),  # NDJSON bodies (POST /api/leads/bulk)
        },
    )
    output, _ = await asyncio.wait_for(process.communicate(), 110)
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")
