"""The ``slapos-collect`` command line.

Each subcommand lives in its own module, which exposes
``add_arguments(parser)`` and ``run(args) -> int``. Only the module of the
chosen subcommand is imported, so the per-minute ``collect`` never pays for
the server stack (aiohttp, prometheus_client, cryptography).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sqlite3
import sys

from .errors import CollectError

# name -> (module, one-line help). Keep the help here so that
# ``slapos-collect --help`` imports nothing.
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("slapos_collect_recipe.collect", "take one set of snapshots and store them (run by cron every minute)"),
    "rotate": ("slapos_collect_recipe.rotate", "dump past days to CSV, archive them, mark them reported, collect garbage"),
    "serve": ("slapos_collect_recipe.server", "run the slapmonitor HTTPS server of a partition"),
    "bench": ("slapos_collect_recipe.bench", "measure the machine's degradation (cpu, sqlite, net)"),
    "availability": ("slapos_collect_recipe.availability", "server availability from the master's access logs"),
    "cron": ("slapos_collect_recipe.cron", "run a partition's etc/cron.d entries as a service"),
    "network-accounting": ("slapos_collect_recipe.nft", "show or --remove the nftables table of the network counters"),
    "folder-size": ("slapos_collect_recipe.folder", "measure partition folder sizes (started in the background by collect)"),
}

log = logging.getLogger("slapos_collect")


def build_parser(argv: list[str], prog: str = "slapos-collect") -> tuple[argparse.ArgumentParser, str | None]:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Measure what every SlapOS partition consumes, keep it safely, serve it.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser, chosen


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser(argv)
    args = parser.parse_args(argv)
    return _dispatch(args, f"slapos-collect {args.command}")


def slapmonitor_main(argv: list[str] | None = None) -> int:
    """``slapmonitor`` is ``slapos-collect serve``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    module = importlib.import_module(COMMANDS["serve"][0])
    parser = argparse.ArgumentParser(prog="slapmonitor", description=COMMANDS["serve"][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    return _dispatch(args, "slapmonitor", run=module.run)


def _dispatch(args: argparse.Namespace, name: str, run=None) -> int:
    run = run or args._run
    try:
        return int(run(args) or 0)
    except CollectError as exc:
        if _logs_to_file():
            log.error("%s", exc)
        print(f"{name}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except (OSError, sqlite3.Error) as exc:
        # Environment problems (disk full, permissions) are the user's to fix:
        # one line on stderr, the details in the log file.
        if _logs_to_file():
            log.exception("failed")
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1


def _logs_to_file() -> bool:
    return any(isinstance(h, logging.FileHandler) for h in log.handlers)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
