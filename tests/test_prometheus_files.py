"""etc/prometheus: the example scrape configuration and alert rules, checked by promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from secmail.monitoring import metrics

FOLDER = Path(__file__).resolve().parent.parent / "etc" / "prometheus"
PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus) is not installed")
@pytest.mark.parametrize(
    ("what", "name"), [("rules", "secmail-rules.yml"), ("config", "prometheus.yml")]
)
def test_promtool_finds_them_valid(what: str, name: str) -> None:
    result = subprocess.run(
        [PROMTOOL or "", "check", what, name],
        cwd=FOLDER,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_name_only_metrics_the_gateway_has() -> None:
    """Every secmail_* name an alert uses is one the gateway exports."""
    text = (FOLDER / "secmail-rules.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"\bsecmail_[a-z_]+", text))
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
    exported = {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in suffixes.get(family.type, [""])
    }
    assert used and used <= exported, used - exported
