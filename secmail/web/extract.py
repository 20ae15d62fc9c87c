# -*- test-case-name: tests.test_i18n -*-
"""
The Python side of C{pybabel extract} (babel.cfg): messages in C{_()} and C{N_()} calls.

Babel's own Python extractor reads tokens, and before Python 3.12 an f-string is one token,
so a C{_('...')} inside an f-string would be missed; reading the syntax tree finds every
call. Used only when extracting, never by the running gateway.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator, Mapping
from typing import IO, Any


def extract_python(
    fileobj: IO[bytes],
    keywords: Mapping[str, Any],
    comment_tags: Collection[str],
    options: Mapping[str, Any],
) -> Iterator[tuple[int, str, str, list[str]]]:
    """(line, function, message, comments) for each keyword call with a literal message."""
    for node in ast.walk(ast.parse(fileobj.read())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in keywords
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.func.id, node.args[0].value, []
