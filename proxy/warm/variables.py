"""Variables in CI files: substituting the values a file itself defines, and finding what is left unresolved.

Only the file's own defaults are known here (a Dockerfile's ``ARG`` defaults, GitLab's ``variables:``, compose's
``${NAME:-default}``); anything else (``${{ matrix.image }}``, ``$CI_REGISTRY_IMAGE``, a Helm template) is
unknowable before the job runs, so such a reference is skipped with the reason rather than guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["substitute", "unresolved"]

_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-+?])(?P<word>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
# GitHub's ${{ expr }}, Go/Helm templates {{ .Values.x }}, any $ left over after substitution.
_UNRESOLVED = re.compile(r"\$\{\{.*?\}\}|\{\{.*?\}\}|\$\{[^}]*\}?|\$[A-Za-z_][A-Za-z0-9_]*|\$")


def substitute(text: str, values: Mapping[str, str], *, defaults: bool = False) -> str:
    """``$NAME`` and ``${NAME}`` replaced where ``values`` has them; with ``defaults``, ``${NAME:-word}`` and
    ``${NAME-word}`` fall back to ``word``. Anything else is left as written, for :func:`unresolved` to find."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        op = match.group("op")
        if op is None:
            return values.get(name, match.group(0))
        if op in (":-", "-") and defaults:
            value = values.get(name)
            if value is None or (op == ":-" and value == ""):
                return match.group("word")
            return value
        return match.group(0)

    if "${{" in text:
        return text  # a GitHub expression: nothing in it can be resolved here
    return _VARIABLE.sub(replace, text)


def unresolved(text: str) -> str | None:
    """The first variable or template expression in ``text``, or None if it has none."""
    match = _UNRESOLVED.search(text)
    return match.group(0) if match else None
