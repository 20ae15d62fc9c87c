"""
What the fuzz tests share: their hypothesis settings and the seed corpus.

A test module, not a fixture: each fuzz test takes its settings from L{fuzz_settings}, so that
CI runs a fixed, small number of examples (the whole suite in about a minute) and a developer
can run the same tests much longer without editing them.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from secmail import config

CORPUS = Path(__file__).parent / "corpus"
EXAMPLES_VARIABLE = "SECMAIL_FUZZ_EXAMPLES"
LONG_DATABASE = Path(os.environ.get("TMPDIR", "/tmp")) / "secmail-fuzz-examples"


def register_profiles() -> None:
    """
    Two profiles. "ci": no example database (nothing written into the work tree), randomised,
    no deadline (the machine is shared and slow); each test says how many examples it runs.
    "long": for a developer, 20 times the examples, failures kept in a database outside the
    work tree so that the next run tries them first.
    """
    common = {
        "deadline": None,
        "derandomize": False,
        "print_blob": True,
        "suppress_health_check": [
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    }
    settings.register_profile("ci", database=None, **common)  # type: ignore[arg-type]
    settings.register_profile(
        "long",
        database=DirectoryBasedExampleDatabase(str(LONG_DATABASE)),
        **common,  # type: ignore[arg-type]
    )


def fuzz_settings(ci_examples: int, stateful_step_count: int | None = None) -> settings:
    """
    The settings of one fuzz test.

    By default the "ci" profile with C{ci_examples} examples. C{SECMAIL_FUZZ_EXAMPLES=N} runs N
    examples instead; C{--hypothesis-profile=long} runs 20 times C{ci_examples}; any other
    profile loaded on the command line runs with its own settings.
    """
    register_profiles()
    current = settings.get_current_profile_name()
    extra = {} if stateful_step_count is None else {"stateful_step_count": stateful_step_count}
    examples = os.environ.get(EXAMPLES_VARIABLE, "").strip()
    if current in ("default", "ci"):
        base, count = settings.get_profile("ci"), ci_examples
    elif current == "long":
        base, count = settings.default, 20 * ci_examples
    else:
        base, count = settings.default, settings.default.max_examples
    if examples:
        count = int(examples)
    return settings(base, max_examples=count, **extra)


def corpus() -> dict[str, bytes]:
    """The seed messages by file name, in a stable order."""
    return {path.name: path.read_bytes() for path in sorted(CORPUS.glob("*.eml"))}


def gateway_settings(data_dir: str, **smtp: object) -> config.Settings:
    """A gateway for corp.example (internal) with a relay outside, as the other tests use."""
    return config.from_mapping(
        {
            "gateway": {
                "hostname": "gw.example",
                "data_dir": data_dir,
                "bounce_address": "bounces@gw.example",
                "notification_from": "secmail@gw.example",
            },
            "routes": {
                "outgoing": "smtp://relay.example:25",
                "incoming": "smtp://mail.corp.example:25",
                "incoming_domains": ["corp.example"],
            },
            "portal": {"url": "https://portal.gw.example"},
            "smtp": dict(smtp),
        }
    )
