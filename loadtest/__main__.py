"""``python -m loadtest ...``: the click group from loadtest.cli, plus any subcommands other modules add."""

from __future__ import annotations

import importlib

from loadtest.cli import cli


def main() -> None:
    try:
        importlib.import_module("loadtest.scenario")  # registers `scenario` on the group when present
    except ModuleNotFoundError as exc:
        if exc.name != "loadtest.scenario":
            raise
    cli()


if __name__ == "__main__":
    main()
