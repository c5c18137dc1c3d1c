"""[relay], [kafka] and [callbacks.NAME]: the example documents them, bad values are named, the
signature is the one Standard Webhooks libraries verify."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import re
import sys
from pathlib import Path

import pytest
import standardwebhooks
from aiokafka import codec as aiokafka_codec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailerd import config
from mailerd.relay import records, signing
from mailerd.relay.kafka import producer_options

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "mailerd.example.toml"
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def _block(text: str, header: str) -> str:
    """The example's commented-out ``#[header]`` block."""
    start = text.index(f"#[{header}]\n")
    end = text.find("\n\n", start)
    return text[start : end if end != -1 else len(text)]


@pytest.mark.parametrize(
    ("header", "cls"), [("kafka", config.KafkaConfig), ("callbacks.app", config.CallbackConfig)]
)
def test_the_example_documents_every_key_of_the_commented_sections(header: str, cls: type) -> None:
    block = _block(EXAMPLE.read_text(encoding="utf-8"), header)
    missing = []
    for field in dataclasses.fields(cls):
        if field.name == "name":
            continue  # the table's own name
        match = re.search(rf"^# {field.name}(?:_file)? = ", block, flags=re.MULTILINE)
        before = block[: match.start()].rstrip("\n").splitlines() if match else []
        if not match or not before or not before[-1].startswith("#"):
            missing.append(field.name)
    assert missing == []


def test_the_example_sections_load_when_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    (tmp_path / "kafka_password").write_text("pw\n")
    (tmp_path / "callback_secret").write_text(SECRET + "\n")
    for header in ("kafka", "callbacks.app"):
        block = _block(text, header)
        uncommented = re.sub(r"^# (\w+ = )", r"\1", block, flags=re.MULTILINE).replace(
            f"#[{header}]", f"[{header}]"
        )
        text = text.replace(block, uncommented)
    text = text.replace("/etc/mailerd/kafka_password", str(tmp_path / "kafka_password"))
    text = text.replace("/etc/mailerd/callback_secret", str(tmp_path / "callback_secret"))
    path = tmp_path / "mailerd.toml"
    path.write_text(text, encoding="utf-8")
    loaded = config.load(path, env={})
    assert loaded.kafka is not None
    assert loaded.kafka == config.KafkaConfig(
        bootstrap_servers=("kafka1:9092",), sasl_password=config.Secret("pw")
    )
    endpoint = loaded.callbacks["app"]
    assert (endpoint.url, endpoint.secret) == ("https://app.example.com/hooks/mailerd", config.Secret(SECRET))


def _error(raw: dict[str, object], env: dict[str, str] | None = None) -> str:
    with pytest.raises(config.ConfigError) as caught:
        config.from_mapping(raw, env=env or {})
    return str(caught.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"kafka": {}}, '[kafka] bootstrap_servers: required, e.g. ["kafka1:9092"]'),
        ({"kafka": {"bootstrap_servers": ["k:1"], "kinds": ["emails"]}}, "[kafka] kinds: expected some of"),
        (
            {"kafka": {"bootstrap_servers": ["k:1"], "security_protocol": "SASL_SSL"}},
            "[kafka] sasl_mechanism: required with security_protocol SASL_SSL",
        ),
        (
            {"kafka": {"bootstrap_servers": ["k:1"], "sasl_mechanism": "PLAIN"}},
            "[kafka] sasl_mechanism: needs security_protocol SASL_PLAINTEXT or SASL_SSL",
        ),
        ({"kafka": {"bootstrap_servers": ["k:1"], "acks": "2"}}, "[kafka] acks: expected one of"),
        (  # the producer refused it at its first delivery: the relay failed, retried forever
            {"kafka": {"bootstrap_servers": ["k:1"], "acks": "1", "enable_idempotence": True}},
            '[kafka] enable_idempotence: needs acks = "all"',
        ),
        (
            {"kafka": {"bootstrap_servers": ["k:1"], "ssl_cafile": "/nonexistent/ca.pem"}},
            "ssl_cafile: /nonexistent",
        ),
        (
            {"callbacks": {"app": {"url": "ftp://x"}}},
            "[callbacks.app] url: expected an http:// or https:// URL",
        ),
        ({"callbacks": {"app": {"url": "https://x/"}}}, "[callbacks.app] secret: required"),
        ({"callbacks": "x"}, "[callbacks]: expected a table of endpoints"),
        ({"relay": {"start": "now"}}, "[relay] start: expected one of"),
        ({"relay": {"run_in": "thread"}}, "[relay] run_in: expected one of"),
        ({"relay": {"listen": "9465"}}, "[relay] listen: expected HOST:PORT or empty, got '9465'"),
        (
            {"relay": {"retry_base_s": 5, "retry_max_s": 1}},
            "[relay] retry_max_s: must be at least retry_base_s",
        ),
        # 1e-9 was taken: a failing destination retried in a near-busy loop
        ({"relay": {"retry_base_s": 1e-9}}, "[relay] retry_base_s: must be at least 0.05"),
        (
            {"relay": {"retry_max_s": 0.01, "retry_base_s": 0.01}},
            "[relay] retry_base_s: must be at least 0.05",
        ),
        ({"relay": {"retry_max_s": 0.5}}, "[relay] retry_max_s: must be at least 1"),
    ],
)
def test_bad_relay_settings_are_named(raw: dict[str, object], message: str) -> None:
    assert message in _error(raw)


def test_secrets_come_from_the_environment_never_the_file() -> None:
    assert "secrets may not be written in the file" in _error(
        {"callbacks": {"app": {"url": "https://x/", "secret": SECRET}}}
    )
    assert "secrets may not be written in the file" in _error(
        {"kafka": {"bootstrap_servers": ["k:1"], "sasl_password": "pw"}}
    )
    loaded = config.from_mapping(
        {"callbacks": {"App": {"url": "https://x/", "event_types": ["complaint"], "kinds": ["event"]}}},
        env={"MAILERD_CALLBACKS__APP__SECRET": SECRET, "MAILERD_KAFKA__BOOTSTRAP_SERVERS": "k:1"},
    )
    assert loaded.callbacks["App"].secret == config.Secret(SECRET)
    assert loaded.kafka is not None and loaded.kafka.bootstrap_servers == ("k:1",)
    assert "**********" in str(config.redacted(loaded)["callbacks"])
    assert "[callbacks.app] secret: expected whsec_ followed by base64" in _error(
        {"callbacks": {"app": {"url": "https://x/"}}}, env={"MAILERD_CALLBACKS__APP__SECRET": "whsec_bad"}
    )


def test_event_types_need_event_records() -> None:
    assert '[callbacks.app] event_types: needs "event" in kinds' in _error(
        {"callbacks": {"app": {"url": "https://x/", "kinds": ["email"], "event_types": ["complaint"]}}},
        env={"MAILERD_CALLBACKS__APP__SECRET": SECRET},
    )


def test_sasl_and_tls_reach_the_producer(tmp_path: Path) -> None:
    loaded = config.from_mapping(
        {"kafka": {"bootstrap_servers": ["k:1"], "security_protocol": "SASL_PLAINTEXT",
                   "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "mailerd", "acks": "1"}},
        env={"MAILERD_KAFKA__SASL_PASSWORD": "s3cret"},
    )  # fmt: skip
    assert loaded.kafka is not None
    options = producer_options(loaded.kafka)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_password"] == "s3cret"
    assert options["acks"] == 1
    assert options["enable_idempotence"] is False


def _self_signed(directory: Path) -> None:
    """A certificate (cert.pem, also the CA) and its key (key.pem) in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailerd")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def test_tls_files_under_the_home_directory_reach_the_producer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the configuration accepted "~/..." (it checks the files with the home directory expanded);
    # the producer's TLS context did not expand it: FileNotFoundError, and the relay never ran
    _self_signed(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    loaded = config.from_mapping(
        {"kafka": {"bootstrap_servers": ["k:1"], "security_protocol": "SSL", "ssl_cafile": "~/cert.pem",
                   "ssl_certfile": "~/cert.pem", "ssl_keyfile": "~/key.pem"}}
    )  # fmt: skip
    assert loaded.kafka is not None
    context = producer_options(loaded.kafka)["ssl_context"]
    assert [cert["subject"] for cert in context.get_ca_certs()] == [((("commonName", "mailerd"),),)]


def test_signatures_verify_with_standardwebhooks() -> None:
    body = b'{"type":"mailerd.records","data":{"records":[]}}'
    now = int(dt.datetime.now(dt.UTC).timestamp())
    headers = signing.headers(signing.secret_key(SECRET), "msg_1", now, body)
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == {
        "type": "mailerd.records",
        "data": {"records": []},
    }
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body + b" ", headers)
    assert signing.message_id(["a", "b"]) == signing.message_id(["a", "b"]) != signing.message_id(["a"])


def test_records_have_stable_ids_and_keys() -> None:
    at = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    record = records.email(
        tx=5, campaign_id=7, lead_id=9, status=3, provider_message_id=None, error="uncertain: timeout",
        sent_at=at, account_id=2, provider="ses", address=None,
    )  # fmt: skip
    assert (record.id, record.key, record.fields["status"]) == ("email:7:9", b"2:9", "unknown")
    again = records.stored("email", record.id, record.value.decode(), at)
    assert (again.id, again.key, again.value, again.account_id, again.lead_id) == (
        record.id, record.key, record.value, 2, 9,
    )  # fmt: skip


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd"])
def test_a_compression_without_its_codec_is_named(codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every delivery failed ("Compression library for zstd not found"), and nothing was
    published; the codecs come with mailerd, so only an install without cramjam lacks them."""
    config.from_mapping({"kafka": {"bootstrap_servers": ["k:1"], "compression": codec}}, env={})
    assert aiokafka_codec.has_snappy() and aiokafka_codec.has_lz4() and aiokafka_codec.has_zstd()
    monkeypatch.setitem(sys.modules, "cramjam", None)  # as if not installed
    assert f"[kafka] compression: {codec} needs the cramjam package" in _error(
        {"kafka": {"bootstrap_servers": ["k:1"], "compression": codec}}
    )
