"""CLI subcommands besides ``serve`` and ``verify``: each module registers its parser and runs it."""
