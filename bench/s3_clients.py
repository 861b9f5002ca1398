"""Two async S3 clients against a real SeaweedFS on this machine: which one the S3 backend should use.

    .venv/bin/python -m bench.s3_clients [--mib 200] [--small-gets 50] [--rounds 3] [--endpoint URL]

For each client, ``--rounds`` times back to back (the median counts): a ``--mib`` MiB put fed in 1 MiB chunks as
a fill would (multipart, 8 MiB parts), a streaming get of it, and the latency of ``--small-gets`` GETs of a 1 KiB
object (median and p90); then the time SeaweedFS takes to copy the big object server-side (the alternative to
completing an upload only after verification: upload to a temporary key, copy once verified). obstore (Rust's
object_store) streams a put from an async iterator; aiobotocore's put is driven part by part
(CreateMultipartUpload, UploadPart, CompleteMultipartUpload) as the backend does. SeaweedFS is started by the
harness (``tests.harness.seaweed``), unless ``--endpoint`` names a running one (then AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY must be set).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024
PART = 8 * 1024 * 1024
BUCKET = "bench-clients"


@dataclass
class Figures:
    put_mib_s: list[float]
    get_mib_s: list[float]
    small_get_ms: list[float]
    copy_s: list[float]


@dataclass(frozen=True)
class Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for offset in range(0, len(data), CHUNK):
        yield bytes(view[offset : offset + CHUNK])


async def _timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


class ObstoreClient:
    name = "obstore"

    def __init__(self, server: Server) -> None:
        from obstore.store import S3Store

        self._store = S3Store(
            BUCKET,
            endpoint=server.endpoint,
            region=server.region,
            access_key_id=server.access_key,
            secret_access_key=server.secret_key,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )

    async def __aenter__(self) -> ObstoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def put_big(self, key: str, data: bytes) -> None:
        import obstore

        await obstore.put_async(self._store, key, _chunks(data), chunk_size=PART, max_concurrency=4)

    async def get_big(self, key: str) -> int:
        import obstore

        result = await obstore.get_async(self._store, key)
        total = 0
        async for chunk in result.stream(min_chunk_size=CHUNK):
            total += len(chunk)
        return total

    async def put_small(self, key: str, data: bytes) -> None:
        import obstore

        await obstore.put_async(self._store, key, data)

    async def get_small(self, key: str) -> bytes:
        import obstore

        result = await obstore.get_async(self._store, key)
        return bytes(await result.bytes_async())


class BotocoreClient:
    name = "aiobotocore"

    def __init__(self, server: Server) -> None:
        self._server = server
        self._client: Any = None
        self._context: Any = None

    async def __aenter__(self) -> BotocoreClient:
        from aiobotocore.session import get_session
        from botocore.config import Config

        self._context = get_session().create_client(
            "s3",
            endpoint_url=self._server.endpoint,
            region_name=self._server.region,
            aws_access_key_id=self._server.access_key,
            aws_secret_access_key=self._server.secret_key,
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
        )
        self._client = await self._context.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._context.__aexit__(None, None, None)

    async def put_big(self, key: str, data: bytes) -> None:
        client = self._client
        upload = await client.create_multipart_upload(Bucket=BUCKET, Key=key)
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        pending: list[asyncio.Task[None]] = []
        buffer = bytearray()

        async def send(number: int, body: bytes) -> None:
            answer = await client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})

        async for chunk in _chunks(data):
            buffer += chunk
            if len(buffer) >= PART:
                pending.append(asyncio.create_task(send(len(pending) + 1, bytes(buffer))))
                buffer.clear()
                if len([t for t in pending if not t.done()]) >= 4:
                    await asyncio.wait([t for t in pending if not t.done()], return_when=asyncio.FIRST_COMPLETED)
        if buffer:
            pending.append(asyncio.create_task(send(len(pending) + 1, bytes(buffer))))
        await asyncio.gather(*pending)
        parts.sort(key=lambda part: int(part["PartNumber"]))
        await client.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    async def get_big(self, key: str) -> int:
        answer = await self._client.get_object(Bucket=BUCKET, Key=key)
        total = 0
        async with answer["Body"] as body:
            async for chunk in body.iter_chunks(CHUNK):
                total += len(chunk)
        return total

    async def copy(self, source: str, target: str) -> None:
        await self._client.copy_object(Bucket=BUCKET, Key=target, CopySource={"Bucket": BUCKET, "Key": source})

    async def put_small(self, key: str, data: bytes) -> None:
        await self._client.put_object(Bucket=BUCKET, Key=key, Body=data)

    async def get_small(self, key: str) -> bytes:
        answer = await self._client.get_object(Bucket=BUCKET, Key=key)
        async with answer["Body"] as body:
            data: bytes = await body.read()
            return data


async def measure(server: Server, mib: int, small_gets: int, rounds: int) -> dict[str, Figures]:
    await _create_bucket(server)
    data = os.urandom(mib * CHUNK)
    figures = {name: Figures([], [], [], []) for name in ("obstore", "aiobotocore")}
    for round_ in range(rounds):
        # Back to back, alternating which goes first: the machine is shared and its load drifts.
        order: list[type[ObstoreClient] | type[BotocoreClient]] = [ObstoreClient, BotocoreClient]
        for kind in order if round_ % 2 == 0 else order[::-1]:
            async with kind(server) as client:
                key = f"{client.name}/big-{round_}"
                started = time.perf_counter()
                await client.put_big(key, data)
                put = time.perf_counter() - started
                started = time.perf_counter()
                got = await client.get_big(key)
                fetched = time.perf_counter() - started
                if got != len(data):
                    raise RuntimeError(f"{client.name}: got {got} bytes of {len(data)}")
                await client.put_small(f"{client.name}/small", os.urandom(1024))
                await client.get_small(f"{client.name}/small")  # a warm connection, as a server has
                latencies = [await _timed(lambda: client.get_small(f"{client.name}/small")) for _ in range(small_gets)]
                entry = figures[client.name]
                entry.put_mib_s.append(mib / put)
                entry.get_mib_s.append(mib / fetched)
                entry.small_get_ms.append(statistics.median(latencies) * 1000)
                entry.small_get_ms.append(sorted(latencies)[int(len(latencies) * 0.9)] * 1000)
                if isinstance(client, BotocoreClient):
                    # The alternative to completing the upload after verification: upload to a temporary key,
                    # then copy it to the blob's key. What that copy costs:
                    started = time.perf_counter()
                    await client.copy(key, key + ".copy")
                    entry.copy_s.append(time.perf_counter() - started)
    return figures


async def _create_bucket(server: Server) -> None:
    async with BotocoreClient(server) as client:
        try:
            await client._client.create_bucket(Bucket=BUCKET)
        except Exception as exc:
            if "BucketAlready" not in type(exc).__name__ and "BucketAlready" not in str(exc):
                raise


def format_table(figures: dict[str, Figures], mib: int, small_gets: int, rounds: int) -> str:
    lines = [
        f"S3 clients against SeaweedFS on loopback; median of {rounds} rounds; load average {os.getloadavg()[0]:.2f}",
        f"| client | put {mib} MiB (multipart) | get {mib} MiB | 1 KiB get, median of {small_gets} | p90 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, entry in figures.items():
        medians, p90s = entry.small_get_ms[0::2], entry.small_get_ms[1::2]
        put, get = statistics.median(entry.put_mib_s), statistics.median(entry.get_mib_s)
        lines.append(
            f"| {name} | {put:.0f} MiB/s | {get:.0f} MiB/s"
            f" | {statistics.median(medians):.2f} ms | {statistics.median(p90s):.2f} ms |"
        )
    copies = figures["aiobotocore"].copy_s
    lines.append(f"Server-side copy of the {mib} MiB object (CopyObject): {statistics.median(copies):.2f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--small-gets", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--endpoint", help="a running S3 server (credentials from AWS_ACCESS_KEY_ID/...)")
    args = parser.parse_args()
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    if args.endpoint:
        server = Server(args.endpoint, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
        figures = asyncio.run(measure(server, args.mib, args.small_gets, args.rounds))
    else:
        from tests.harness.seaweed import SeaweedS3

        with tempfile.TemporaryDirectory(prefix="bench-s3-") as workdir, SeaweedS3(Path(workdir)) as seaweed:
            server = Server(seaweed.endpoint, seaweed.access_key, seaweed.secret_key, seaweed.region)
            figures = asyncio.run(measure(server, args.mib, args.small_gets, args.rounds))
    print(format_table(figures, args.mib, args.small_gets, args.rounds))


if __name__ == "__main__":
    main()
