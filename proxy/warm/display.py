"""What a person sees: a progress display of blobs and bytes (rich) while images are warmed, one line per image as
it finishes, and the summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

from proxy.warm.client import BlobOutcome, ImageResult
from proxy.warm.targets import Not, Target

__all__ = ["ProgressDisplay", "image_line", "not_warmed_line", "summary"]

_LABEL_WIDTH = len(BlobOutcome.CACHED.value)


class ProgressDisplay:
    """A :class:`~proxy.warm.client.Observer`: the image being warmed, its blobs done out of all, its bytes done
    (a cached blob counts whole at once), and a bar for each blob being downloaded."""

    def __init__(self, console: Console, images: int) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            console=console,
            transient=True,
        )
        self._images = images
        self._image = 0
        self._reference = ""
        self._done = self._count = 0
        self._overall = self._progress.add_task("", total=None)
        self._blobs: dict[str, TaskID] = {}
        self._received: Counter[str] = Counter()

    def __enter__(self) -> ProgressDisplay:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def image_started(self, reference: str) -> None:
        self._image += 1
        self._reference = reference
        self._done = self._count = 0
        self._progress.reset(self._overall, total=None)
        self._describe()

    def blobs_found(self, count: int, size: int) -> None:
        self._count = count
        self._progress.update(self._overall, total=size)
        self._describe()

    def blob_started(self, digest: str, size: int) -> None:
        self._blobs[digest] = self._progress.add_task(f"  {digest.partition(':')[2][:12]}", total=size)

    def blob_advanced(self, digest: str, received: int) -> None:
        self._received[digest] += received
        self._progress.advance(self._blobs[digest], received)
        self._progress.advance(self._overall, received)

    def blob_finished(self, digest: str, size: int, outcome: BlobOutcome) -> None:
        self._progress.remove_task(self._blobs.pop(digest))
        # A cached blob is not read, a failed one maybe not to its end: either way its bytes are done with.
        self._progress.advance(self._overall, max(0, size - self._received.pop(digest, 0)))
        self._done += 1
        self._describe()

    def _describe(self) -> None:
        blobs = f"blobs {self._done}/{self._count}" if self._count else "manifests"
        self._progress.update(self._overall, description=f"[{self._image}/{self._images}] {self._reference}  {blobs}")


def image_line(result: ImageResult, target: Target) -> str:
    outcome = result.outcome
    platforms = f" [{', '.join(result.platforms)}]" if result.platforms else ""
    where = f" ({target.where})" if target.where else ""
    if outcome is BlobOutcome.FAILED:
        more = len(result.errors) - 3
        errors = "; ".join(result.errors[:3]) + (f" (and {more} more)" if more > 0 else "")
        return f"{outcome.value:<{_LABEL_WIDTH}}  {result.reference}{platforms}{where}: {errors}"
    count, size = sum(result.blobs.values()), sum(result.sizes.values())
    fetched = result.blobs[BlobOutcome.FETCHED]
    detail = f"{count} blobs, {human(size)}"
    if fetched:
        detail += f"; fetched {fetched} ({human(result.sizes[BlobOutcome.FETCHED])})"
    return f"{outcome.value:<{_LABEL_WIDTH}}  {result.reference}{platforms}{where}: {detail}"


def not_warmed_line(item: Not) -> str:
    label = "failed" if item.failed else "skipped"
    where = f" ({item.where})" if item.where else ""
    return f"{label:<{_LABEL_WIDTH}}  {item.text}{where}: {item.reason}"


def summary(
    results: Iterable[ImageResult], not_warmed: Iterable[Not], blobs: Iterable[tuple[int, BlobOutcome]]
) -> list[str]:
    images: Counter[str] = Counter(result.outcome.value for result in results)
    for item in not_warmed:
        images["failed" if item.failed else "skipped"] += 1
    counts: Counter[BlobOutcome] = Counter()
    sizes: Counter[BlobOutcome] = Counter()
    for size, outcome in blobs:
        counts[outcome] += 1
        sizes[outcome] += size
    image_parts = [f"{images[label]} {label}" for label in ("cached already", "fetched", "failed", "skipped")]
    blob_parts = [
        f"{counts[o]} {o.value}" + (f" ({human(sizes[o])})" if o is not BlobOutcome.FAILED else "") for o in BlobOutcome
    ]
    return [f"images: {', '.join(image_parts)}", f"blobs: {', '.join(blob_parts)}"]


def human(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``20.0 MiB``, ``1.2 GiB``."""
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for larger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"
