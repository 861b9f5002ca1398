"""Dockerfiles: the images ``FROM`` lines pull.

Handled as BuildKit reads them: line continuations (with the ``# escape=`` directive), comments, heredocs (whose
bodies are not instructions), ``FROM [--platform=...] image [AS name]``. Global ``ARG``s (those before the first
``FROM``) and their defaults are substituted, ``${NAME:-word}`` included. A ``FROM`` naming an earlier stage, or
``scratch``, pulls nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from proxy.warm.cifiles.mention import Mention
from proxy.warm.variables import substitute, unresolved

__all__ = ["images"]

_DIRECTIVE = re.compile(r"#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*")
_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
_HEREDOC_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD"})


def images(text: str, source: str) -> Iterator[Mention]:
    arguments: dict[str, str] = {}
    undefined: set[str] = set()  # global ARGs declared without a default: left for unresolved() to report
    stages: set[str] = set()
    seen_from = False
    for line_number, instruction, rest in _instructions(text):
        if instruction == "ARG" and not seen_from:
            for name, value in _arguments(rest):
                if value is None:
                    undefined.add(name)
                else:
                    arguments[name] = substitute(value, arguments, defaults=True)
        elif instruction == "FROM":
            seen_from = True
            mention = _from(rest, arguments, stages, f"{source}:{line_number}")
            if mention is not None:
                yield mention


def _from(rest: str, arguments: dict[str, str], stages: set[str], where: str) -> Mention | None:
    words = rest.split()
    platform = None
    while words and words[0].startswith("--"):
        flag = words.pop(0)
        if flag.startswith("--platform="):
            platform = flag.removeprefix("--platform=")
        elif flag == "--platform" and words:
            platform = words.pop(0)
    if not words:
        return None
    image = substitute(words[0], arguments, defaults=True)
    earlier_stage = image.lower() in stages
    if len(words) >= 3 and words[1].lower() == "as":
        stages.add(words[2].lower())
    if earlier_stage or image.lower() == "scratch":
        return None
    if platform is not None:
        platform = substitute(platform, arguments, defaults=True)
        # $BUILDPLATFORM/$TARGETPLATFORM are the builder's: the platforms warmed are then the command's.
        if unresolved(platform) is not None:
            platform = None
    return Mention(image, where, platform=platform)


def _arguments(rest: str) -> Iterator[tuple[str, str | None]]:
    for word in rest.split():
        name, equals, value = word.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        yield name, value if equals else None


def _instructions(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, upper-case instruction, the rest) for each logical line."""
    lines = text.splitlines()
    escape = "\\"
    i = 0
    # Parser directives come first, before any comment, blank line or instruction.
    while i < len(lines) and (match := _DIRECTIVE.fullmatch(lines[i].strip())):
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
        i += 1
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        start = i
        parts: list[str] = []
        while line.endswith(escape):
            parts.append(line[:-1])
            # Blank lines and comments inside a continuation neither end it nor belong to it.
            while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith("#")):
                i += 1
            if i == len(lines):
                line = ""
                break
            line = lines[i].strip()
            i += 1
        parts.append(line)
        logical = " ".join(parts).strip()
        if not logical:
            continue
        instruction, *more = logical.split(None, 1)
        instruction, rest = instruction.upper(), more[0] if more else ""
        if instruction in _HEREDOC_INSTRUCTIONS:
            # A heredoc's body is data: a "FROM" line in a here-script is not an instruction.
            for strip_tabs, _, word in _HEREDOC.findall(rest):
                while i < len(lines) and (lines[i].lstrip("\t") if strip_tabs else lines[i]) != word:
                    i += 1
                i += 1
        yield start, instruction, rest.strip()
