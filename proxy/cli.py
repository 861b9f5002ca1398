"""``registry-proxy serve`` (and ``python -m proxy``): load the config, run the app under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import uvicorn

from proxy import __version__
from proxy.app import create_app
from proxy.config import ConfigError, Settings, load

__all__ = ["main"]

# Docker's registry client keeps idle connections for 30 s; uvicorn's default of 5 s would make it
# reconnect between nearly every layer of a pull.
KEEP_ALIVE_SECONDS = 75


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="registry-proxy", description="Pull-through caching registry proxy.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: $REGISTRY_PROXY_CONFIG, else built-in defaults: Docker Hub, "
        "cache in ./registry-proxy-cache)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)

    config_path = args.config or (Path(p) if (p := os.environ.get("REGISTRY_PROXY_CONFIG")) else None)
    try:
        settings = load(config_path)
    except ConfigError as exc:
        print(f"registry-proxy: config error: {exc}", file=sys.stderr)
        return 2
    return serve_forever(settings, args.log_level)


def serve_forever(settings: Settings, log_level: str) -> int:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # httpx logs every request at INFO; our own log lines say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_level=log_level,
        log_config=None,
        server_header=False,
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1
