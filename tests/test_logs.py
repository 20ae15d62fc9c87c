"""--json-logs: one JSON object per log event (secmail.logs)."""

from __future__ import annotations

import io
import json
import sys

import pytest
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from secmail import logs
from secmail.tap import Options


def logged(emit: object) -> list[dict[str, object]]:
    """The JSON records of what C{emit(log)} logs."""
    out = io.StringIO()
    publisher = LogPublisher(logs.JsonLinesObserver(out))
    emit(Logger(namespace="secmail.smtp.delivery", observer=publisher))  # type: ignore[operator]
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_one_line_per_event_with_the_named_fields() -> None:
    (record,) = logged(
        lambda log: log.info(
            "{message_id}: accepted from {peer} size={size}",
            message_id="3f9a2c81d0",
            peer="192.0.2.7",
            size=5120,
        )
    )
    assert record["text"] == "3f9a2c81d0: accepted from 192.0.2.7 size=5120"
    assert record["level"] == "info"
    assert record["namespace"] == "secmail.smtp.delivery"
    assert record["message_id"] == "3f9a2c81d0"
    assert record["peer"] == "192.0.2.7"
    assert record["size"] == 5120
    assert str(record["time"]).endswith("+00:00")
    assert not [key for key in record if key.startswith("log_")]


def test_fields_that_are_not_plain_values_are_left_out() -> None:
    (record,) = logged(lambda log: log.warn("x {thing}", thing=object(), count=2))
    assert "thing" not in record and record["count"] == 2
    assert record["level"] == "warn"


def test_a_failure_carries_its_traceback() -> None:
    failure = Failure(ZeroDivisionError("division by zero"))
    (record,) = logged(lambda log: log.failure("Delivery failed", failure))
    assert record["level"] == "critical"
    assert "ZeroDivisionError" in str(record["failure"])


def test_non_ascii_text_stays_readable() -> None:
    (record,) = logged(lambda log: log.info("to {to}", to="pää@example.fi"))
    assert record["to"] == "pää@example.fi"


def test_json_logs_option_sets_twistds_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    twistd = {"logfile": None, "nodaemon": True, "logger": None}
    options = Options()
    options.parent = twistd  # type: ignore[attr-defined]
    options.parseOptions(["--json-logs"])
    assert twistd["logger"] == "secmail.logs.json_observer"
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    observer = logs.json_observer()
    observer({"log_level": LogLevel.info, "log_format": "hi", "log_time": 0.0})
    assert json.loads(sys.stdout.getvalue())["text"] == "hi"  # type: ignore[attr-defined]


def test_json_logs_to_the_log_file(tmp_path: object) -> None:
    path = f"{tmp_path}/twistd.log"
    logs.use_json_logs({"logfile": path, "nodaemon": False})
    try:
        observer = logs.json_observer()
        observer({"log_level": LogLevel.error, "log_format": "bad {n}", "n": 1, "log_time": 0.0})
        with open(path, encoding="utf-8") as f:
            assert json.loads(f.read()) == {
                "time": "1970-01-01T00:00:00.000+00:00",
                "level": "error",
                "namespace": "",
                "text": "bad 1",
                "n": 1,
            }
    finally:
        logs.use_json_logs({"logfile": None, "nodaemon": True})


def test_json_logs_outside_twistd_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        Options().parseOptions(["--json-logs"])
    assert "only under twistd" in capsys.readouterr().err
