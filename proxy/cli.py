"""``registry-proxy serve`` (and ``python -m proxy``): load the config, run the app under uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from proxy import __version__
from proxy.config import ConfigError, Settings, load
from proxy.observability import logs
from proxy.server import EXIT_REFUSED, serve
from storage.verify import verify_blobs

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="registry-proxy", description="Pull-through caching registry proxy.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_command = commands.add_parser("serve", help="run the proxy")
    serve_command.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: $REGISTRY_PROXY_CONFIG, else built-in defaults: Docker Hub, "
        "cache in ./registry-proxy-cache)",
    )
    serve_command.add_argument(
        "--log-level", default=None, choices=["debug", "info", "warning", "error"], help="default: [log] level"
    )
    verify = commands.add_parser(
        "verify", help="re-hash every cached blob; report and remove corrupt ones (exit status 1 if any)"
    )
    verify.add_argument("--config", type=Path, default=None, help="as for serve")
    verify.add_argument("--dry-run", action="store_true", help="report corrupt blobs without removing them")
    argv = sys.argv[1:] if argv is None else argv
    # `serve` with several workers stays the workers' parent for as long as they run: it imports only what it needs
    # (the workers import the app after the fork), so the other commands' modules are imported only to run them,
    # or to list them in the help.
    if _command(argv) not in ("serve", "verify"):
        from proxy.commands import gc as gc_command, ls as ls_command
        from proxy.warm import command as warm

        warm.add_arguments(commands.add_parser("warm", help="pull images, or the images CI files name, into the cache"))
        ls_command.register(commands)
        gc_command.register(commands)
    args = parser.parse_args(argv)

    config_path = args.config or (Path(p) if (p := os.environ.get("REGISTRY_PROXY_CONFIG")) else None)
    try:
        settings = load(config_path)
    except ConfigError as exc:
        print(f"registry-proxy: config error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.command == "verify":
        return verify_cache(settings, remove=not args.dry_run)
    if args.command == "warm":
        return warm.run(args, settings, configured=config_path is not None)
    if args.command == "ls":
        return ls_command.run(settings, args)
    if args.command == "gc":
        return gc_command.run(settings, args)
    return serve_forever(settings, args.log_level)


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first argument that is not an option), if any."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def verify_cache(settings: Settings, *, remove: bool) -> int:
    root = settings.storage.root
    checked = corrupt = 0
    total = 0
    for finding in verify_blobs(root, remove=remove):
        checked += 1
        total += finding.size
        if finding.problem is not None:
            corrupt += 1
            action = "removed" if finding.removed else "kept"
            print(f"CORRUPT {finding.path}: {finding.problem} ({action})")
    print(f"checked {checked} blobs ({total / 2**20:.1f} MiB) under {root}: {corrupt} corrupt")
    return 1 if corrupt else 0


def serve_forever(settings: Settings, log_level: str | None) -> int:
    # Our format and logger names ([log] format: text or JSON lines), before anything logs.
    logs.configure(settings.log, log_level)
    return serve(settings, log_level or settings.log.level)
