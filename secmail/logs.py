# -*- test-case-name: tests.test_logs -*-
"""
Logs a machine can read: with C{twistd secmail --json-logs}, one JSON object per line for every
log event, instead of Twisted's text lines.

Each object has C{time} (RFC 3339, UTC), C{level}, C{namespace} (the module that logged),
C{text} (the line the text log would show), and the event's own named fields whose values are
plain (strings, numbers, booleans): C{message_id} (the short message id), C{envelope_id},
C{peer} and the others each log call names. A failure adds C{failure}, its traceback. The
fields are what the code logs, so nothing goes into them that the text log would not show:
no content, subjects, tokens or PINs.

The lines go where twistd would write its text log: standard output under C{--nodaemon}
(systemd's journal), else C{--logfile} (default C{twistd.log}), rotated as twistd rotates it.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from twisted.python.logfile import LogFile
from zope.interface import implementer

#: Keys of Twisted's own (C{log_*}) and of legacy C{twisted.python.log} events: not copied.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "format", "time", "why", "failure"})
_PLAIN = (str, int, float, bool, type(None))

#: Where L{json_observer} writes: set from twistd's options by L{use_json_logs}.
_destination: dict[str, Any] = {"logfile": None, "nodaemon": True}


@implementer(ILogObserver)
class JsonLinesObserver:
    """Writes each event as one line of JSON to C{out}."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        self._out.write(json.dumps(as_record(event), ensure_ascii=False) + "\n")
        self._out.flush()


def as_record(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object for one Twisted log event."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time") or 0, UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace") or event.get("system") or "",
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in record:
            continue
        if isinstance(value, _PLAIN):
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    return record


def use_json_logs(twistd_options: Any) -> None:
    """Make twistd start its logging with L{json_observer} (from the C{secmail} options)."""
    _destination["logfile"] = twistd_options.get("logfile")
    _destination["nodaemon"] = bool(twistd_options.get("nodaemon"))
    twistd_options["logger"] = f"{__name__}.json_observer"


def json_observer() -> JsonLinesObserver:
    """twistd's C{--logger} factory: JSON lines where the text log would have gone."""
    logfile = _destination["logfile"]
    if logfile == "-" or (not logfile and _destination["nodaemon"]):
        return JsonLinesObserver(sys.stdout)
    return JsonLinesObserver(LogFile.fromFullPath(logfile or "twistd.log"))  # type: ignore[arg-type]
