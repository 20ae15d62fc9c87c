"""
The portal's colours meet WCAG 2.1 AA contrast, computed from web/static/portal.css: text
4.5:1 (1.4.3), and 3:1 for what is not text (1.4.11): the focus ring against the cards and
the page, the edge of light buttons and of form fields against the cards.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CSS = (Path(__file__).resolve().parent.parent / "web" / "static" / "portal.css").read_text(
    encoding="utf-8"
)
CARD = "#ffffff"  # .card's background


def variable(name: str) -> str:
    """The colour a custom property of :root is set to."""
    found = re.findall(rf"--{name}:\s*(#[0-9a-fA-F]{{6}})\s*;", CSS)
    assert len(found) == 1, f"--{name} is set {len(found)} times in portal.css"
    return found[0]


def luminance(colour: str) -> float:
    """WCAG 2.1's relative luminance of #rrggbb."""

    def linear(channel: int) -> float:
        c = channel / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(int(colour[i : i + 2], 16)) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_contrast_formula() -> None:
    """Black on white is 21:1, a colour on itself 1:1, and the issue's measurements hold:
    the old amber ring had 2.08:1 on the cards, the light buttons 1.22:1."""
    assert contrast("#000000", "#ffffff") == pytest.approx(21)
    assert contrast("#1f5fae", "#1f5fae") == pytest.approx(1)
    assert contrast("#f0a500", CARD) == pytest.approx(2.08, abs=0.01)
    assert contrast("#e6e9ef", CARD) == pytest.approx(1.22, abs=0.01)


@pytest.mark.parametrize(
    ("what", "foreground", "background", "needed"),
    [
        ("focus ring on a card", "focus", CARD, 3),
        ("focus ring on the page", "focus", "bg", 3),
        ("light button's edge on a card", "edge", CARD, 3),
        ("light button's edge on its own face", "edge", "light", 3),
        ("form field's edge on a card", "edge", CARD, 3),
        ("text on a card", "text", CARD, 4.5),
        ("text on the page", "text", "bg", 4.5),
        ("text on a light button", "text", "light", 4.5),
        ("muted text on a card", "muted", CARD, 4.5),
        ("muted text on the page", "muted", "bg", 4.5),
        ("white text on the default brand colour", "#ffffff", "brand", 4.5),
    ],
)
def test_portal_colours_contrast(
    what: str, foreground: str, background: str, needed: float
) -> None:
    """Each pair of the style sheet's colours has the contrast WCAG 2.1 AA asks for."""
    fg = foreground if foreground.startswith("#") else variable(foreground)
    bg = background if background.startswith("#") else variable(background)
    ratio = contrast(fg, bg)
    assert ratio >= needed, f"{what}: {fg} on {bg} is {ratio:.2f}:1, {needed}:1 needed"


def test_the_rules_use_the_checked_colours() -> None:
    """The focus ring, the light buttons and the fields are drawn with the checked variables,
    and no other outline colour is set."""
    assert re.search(r"summary:focus\s*\{\s*outline: 3px solid var\(--focus\)", CSS)
    assert re.search(r"\.button\.secondary \{[^}]*border: 1px solid var\(--edge\)", CSS)
    assert re.search(r"textarea \{ border: 1px solid var\(--edge\)", CSS)
    assert re.findall(r"outline:[^;]*;", CSS) == ["outline: 3px solid var(--focus);"]
    assert ".error { color: #a4001d;" in CSS
    assert contrast("#a4001d", CARD) >= 4.5
