"""
Which package may import which: the arrows of the import graph that issue 11 cut stay cut.
Read from the source (every import, also those inside functions), so no module runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imports(path: Path) -> set[str]:
    """The modules a source file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_secmail_imports_web_only_in_tap() -> None:
    """The web layer (secmail.web) is reached only from the composition root, secmail/tap.py."""
    wrong = {
        module(path): sorted(n for n in imports(path) if within(n, "secmail.web"))
        for path in sources("secmail")
        if module(path) != "secmail.tap" and not within(module(path), "secmail.web")
    }
    assert {name: found for name, found in wrong.items() if found} == {}


def test_nothing_installed_under_a_generic_name() -> None:
    """The source tree has no top-level Python package but secmail (web/ holds only files)."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == {"secmail", "tests"}, packages
    assert not list((ROOT / "web").rglob("*.py"))


@pytest.mark.parametrize("package", ["secmail.config", "secmail.masking"])
def test_configuration_and_masking_stand_alone(package: str) -> None:
    """Configuration and masking import nothing of secmail but themselves (and config masking)."""
    allowed = {package, "secmail.masking"}
    paths = sources("secmail/config") if package == "secmail.config" else []
    paths += [ROOT / "secmail" / "masking.py"] if package == "secmail.masking" else []
    assert paths
    wrong = {
        module(path): sorted(
            n
            for n in imports(path)
            if within(n, "secmail") and not any(within(n, a) for a in allowed)
        )
        for path in paths
    }
    assert {name: found for name, found in wrong.items() if found} == {}


def test_masking_defined_once() -> None:
    """Numbers and secrets are masked by secmail.masking only: no second definition."""
    names = {"mask_number", "mask_sms_recipients", "mask_dsn", "mask_url", "mask_pin"}
    found = {
        f"{module(path)}.{node.name}"
        for path in sources("secmail")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in names
    }
    assert found == {f"secmail.masking.{name}" for name in names}


def test_portal_does_not_reach_the_console() -> None:
    """The admin console (secmail.web.admin) is its own app: no portal module imports it, so
    none of its routes can end up on the portal's listeners; only tap.py puts it on its own."""
    wrong = {
        module(path): sorted(n for n in imports(path) if within(n, "secmail.web.admin"))
        for path in sources("secmail")
        if not within(module(path), "secmail.web.admin") and module(path) != "secmail.tap"
    }
    assert {name: found for name, found in wrong.items() if found} == {}
    assert "secmail.web.admin.console" in imports(ROOT / "secmail" / "tap.py")
