"""What to warm: the images named on the command line and found in CI files, each once, and what is not warmed
(skipped: it cannot be known before the job runs; failed: it cannot be pulled through this proxy) and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from proxy.warm.cifiles import CIFileError, Mention, read_ci_file
from proxy.warm.platforms import Platform
from proxy.warm.references import ImageReference, InvalidReference, parse_reference
from proxy.warm.variables import unresolved

__all__ = ["Not", "Plan", "Target", "plan"]


@dataclass(frozen=True)
class Target:
    reference: ImageReference
    platforms: tuple[Platform, ...]  # empty: every platform of an index
    where: str | None = None  # the first place in a CI file that named it


@dataclass(frozen=True)
class Not:
    """A reference that is not warmed: ``failed`` ones make the exit status 1, skipped ones do not."""

    text: str
    where: str | None
    reason: str
    failed: bool

    @property
    def key(self) -> tuple[str, str]:
        return self.text, self.reason


@dataclass
class Plan:
    targets: list[Target] = field(default_factory=list)
    not_warmed: list[Not] = field(default_factory=list)
    file_errors: list[str] = field(default_factory=list)  # one line each, naming the file

    @property
    def failures(self) -> int:
        return len(self.file_errors) + sum(1 for n in self.not_warmed if n.failed)


def plan(
    images: Sequence[str],
    files: Sequence[Path],
    *,
    kind: str | None = None,
    platforms: tuple[Platform, ...] = (),
    served: frozenset[str] | None = None,
) -> Plan:
    """``served``: the registries the proxy serves, when its configuration is known; None to let it answer."""
    result = Plan()
    mentions: list[Mention] = [Mention(image.removeprefix("docker://"), None) for image in images]
    for path in files:
        try:
            mentions.extend(read_ci_file(path, kind))
        except CIFileError as exc:
            result.file_errors.append(str(exc))
    seen: set[object] = set()
    for mention in mentions:
        judged = _judge(mention, platforms, served)
        key: object = (str(judged.reference), judged.platforms) if isinstance(judged, Target) else judged.key
        if key in seen:
            continue
        seen.add(key)
        if isinstance(judged, Target):
            result.targets.append(judged)
        else:
            result.not_warmed.append(judged)
    return result


def _judge(mention: Mention, platforms: tuple[Platform, ...], served: frozenset[str] | None) -> Target | Not:
    if mention.skip is not None:
        return Not(mention.text, mention.where, mention.skip, failed=False)
    if (variable := unresolved(mention.text)) is not None:
        return Not(mention.text, mention.where, f"unresolved variable {variable}", failed=False)
    try:
        reference = parse_reference(mention.text)
    except InvalidReference as exc:
        return Not(mention.text, mention.where, f"invalid image reference: {exc}", failed=True)
    if served is not None and reference.registry not in served:
        reason = f"not served by this proxy (no [[upstreams]] entry for {reference.registry})"
        return Not(mention.text, mention.where, reason, failed=True)
    if mention.platform is not None:
        try:
            platforms = (Platform.parse(mention.platform),)
        except ValueError as exc:
            return Not(mention.text, mention.where, f"invalid platform: {exc}", failed=True)
    return Target(reference, platforms, mention.where)
