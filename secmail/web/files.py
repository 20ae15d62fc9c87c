# -*- test-case-name: tests.test_layout -*-
"""
Where the web layer's files are: the top-level C{web/} folder of the source tree holds the page
templates (C{templates/}), the style sheet (C{static/}) and the catalogues (C{locale/}).

An installed secmail carries a copy of that folder inside this package, as C{secmail/web/files}
(setup.py maps it there), so nothing is installed under a generic top-level name. Run from the
source tree (the tests, C{PYTHONPATH} set to a checkout), the folder itself is used.
"""

from __future__ import annotations

import os

_INSTALLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "files")
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "web")

#: The folder with templates/, static/ and locale/.
WEB_FILES = os.path.normpath(_INSTALLED if os.path.isdir(_INSTALLED) else _SOURCE)


def web_file(*parts: str) -> str:
    """The path of a file or folder under L{WEB_FILES}."""
    return os.path.join(WEB_FILES, *parts)
