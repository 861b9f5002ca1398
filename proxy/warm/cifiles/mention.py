from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Mention"]


@dataclass(frozen=True)
class Mention:
    """An image reference found in a CI file, with the file's own variable defaults already substituted."""

    text: str
    # "ci.yml: jobs.test.container", "Dockerfile:3": what a person looks for in the file; None on the command line.
    where: str | None
    platform: str | None = None  # the one platform the file asks for, if it says (FROM --platform, compose)
    skip: str | None = None  # why this is not to be pulled although it looks like an image (compose build:)
