"""The `ferryman` command line: argument parsing, connection settings, and output formats."""

from __future__ import annotations

import json

import pytest

from ferryman.cli import build_parser, connection_from, main, package_version
from ferryman.cli_tools import format_record, health_row, latest_health
from ferryman.codec import encode_binary, encode_structured
from ferryman.contracts import HEALTH_REPORTED, LLM_CHAT_CHUNK
from ferryman.topic_reader import TopicRecord


def test_global_options_are_accepted_before_and_after_the_command() -> None:
    parser = build_parser()

    before = parser.parse_args(["-b", "k1:9092", "chat", "hi"])
    after = parser.parse_args(["chat", "hi", "--bootstrap-servers", "k2:9092", "--tenant", "acme"])
    nested = parser.parse_args(["dlq", "list", "t.dlq", "-b", "k3:9092"])
    absent = parser.parse_args(["tail", "t"])

    assert before.bootstrap_servers == "k1:9092"
    assert after.bootstrap_servers == "k2:9092"
    assert after.tenant == "acme"
    assert nested.bootstrap_servers == "k3:9092"
    assert not hasattr(absent, "bootstrap_servers")


def test_chat_options() -> None:
    args = build_parser().parse_args(
        ["chat", "hi", "--expires-in", "2.5", "--reply-partition", "3", "--create-reply-topic"]
    )

    assert args.expires_in == 2.5
    assert args.reply_partition == 3
    assert args.create_reply_topic
    assert args.tenant is None


def test_a_non_positive_expiry_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["chat", "hi", "--expires-in", "0"])

    assert exited.value.code == 2
    assert "must be positive" in capsys.readouterr().err


def test_tail_starts_at_the_beginning_or_the_last_lines_not_both(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()

    assert parser.parse_args(["tail", "t"]).lines == 10
    assert parser.parse_args(["tail", "t", "--from-beginning", "-f"]).follow
    with pytest.raises(SystemExit):
        parser.parse_args(["tail", "t", "--from-beginning", "-n", "5"])
    assert "not allowed with" in capsys.readouterr().err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"ferryman {package_version()}"
    assert package_version() != "unknown"

    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    assert "--expires-in" in capsys.readouterr().out


def test_the_connection_comes_from_the_environment_and_flags_win() -> None:
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": "env:9092",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "env-user",
        "KAFKA_SASL_PASSWORD": "secret",
    }
    args = build_parser().parse_args(
        ["tail", "t", "-b", "flag:9092", "--sasl-mechanism", "SCRAM-SHA-256"]
    )

    connection = connection_from(args, environ)

    assert connection.bootstrap_servers == "flag:9092"
    assert connection.sasl_mechanism == "SCRAM-SHA-256"
    assert connection.sasl_username == "env-user"


def test_bad_connection_settings_exit_2_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2-secret")

    assert main(["tail", "t"]) == 2

    err = capsys.readouterr().err
    assert "SASL_SSL needs sasl_mechanism, sasl_username" in err
    assert "hunter2-secret" not in err


def test_dlq_replay_refuses_to_replay_everything_without_all(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Refused before connecting: nothing listens on this port.
    assert main(["dlq", "replay", "t.dlq", "-b", "127.0.0.1:1"]) == 2

    assert "--all" in capsys.readouterr().err


def _record(headers: list[tuple[str, bytes]], value: bytes, offset: int = 7) -> TopicRecord:
    return TopicRecord("t", 2, offset, 1_700_000_000_123, b"k", value, headers)


def test_a_record_line_shows_type_id_correlation_run_and_data_but_not_the_token() -> None:
    headers, value = encode_binary(
        {
            "id": "e-1",
            "type": LLM_CHAT_CHUNK,
            "source": "/w",
            "datacontenttype": "application/json",
            "correlationid": "req-9",
            "runid": "1700000000000-ab",
            "replytoken": "tok-secret",
        },
        json.dumps({"index": 0, "delta": {"content": "x" * 500}}).encode(),
    )

    line = format_record(_record(headers, value))

    fields = line.split("\t")
    assert fields[:2] == ["2/7", "22:13:20.123"]
    assert fields[2:6] == [LLM_CHAT_CHUNK, "id=e-1", "corr=req-9", "run=1700000000000-ab"]
    assert fields[6].startswith('{"index":0,"delta":{"content":"xxx')
    assert len(fields[6]) == 160
    assert "tok-secret" not in line


def test_a_record_that_is_not_a_cloudevent_is_shown_as_such() -> None:
    assert format_record(_record([], b"garbage")).endswith("(not a CloudEvent, 7 bytes)")


def _report(instance: str, at: str, **fields: object) -> TopicRecord:
    attributes = {"id": f"h-{instance}-{at}", "type": HEALTH_REPORTED, "source": "/w"}
    data = {"service": "llm-worker", "instance": instance, "reported_at": at, **fields}
    headers, value = encode_structured(attributes, data)
    return _record(headers, value)


def test_health_keeps_the_latest_report_per_instance_and_reads_fields_defensively() -> None:
    records = [
        _report("a", "2025-01-01T00:00:02Z", deployments=[{"status": "healthy"}]),
        _report("a", "2025-01-01T00:00:01Z", deployments=[{"status": "unhealthy"}]),
        _report(
            "b",
            "2025-01-01T00:00:01Z",
            config_version="0123456789abcdef",
            upstreams=[{"status": "healthy"}, {"status": "degraded"}, "junk"],
        ),
        _report("c", "2025-01-01T00:00:01Z", status="healthy", extra={"new": "field"}),
        _record([], b"not an event"),
    ]

    latest = latest_health(records)

    assert sorted(latest) == [("llm-worker", "a"), ("llm-worker", "b"), ("llm-worker", "c")]
    assert health_row(latest[("llm-worker", "a")])[3:] == ["healthy", "1 healthy"]
    assert health_row(latest[("llm-worker", "b")])[3:] == [
        "degraded",
        "1 degraded, 1 healthy, 1 unknown; config 0123456789ab",
    ]
    assert health_row(latest[("llm-worker", "c")])[3:] == ["healthy", "-"]
    older = _report("d", "2025-01-01T00:00:01Z", deployments=[{"status": "healthy"}])
    older_latest = latest_health([older])
    assert health_row(older_latest[("llm-worker", "d")])[3:] == ["healthy", "1 healthy"]
