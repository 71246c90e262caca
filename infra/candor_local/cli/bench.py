"""`candor bench ...`: the benchmark commands, one group that each benchmark joins with its own subcommand.

The benchmarks live in the repository's benchmarks/ folder (not in the installed package): they are found
beside this checkout and registered when present.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the `bench` group to the CLI's subcommands and every benchmark to it; returns the group's parser."""
    bench = subparsers.add_parser("bench", help="measure speed and accuracy; writes docs/benchmarks.md")
    group = bench.add_subparsers(title="benchmarks")
    bench.set_defaults(run=lambda _args: _usage(bench))
    if (REPO / "benchmarks" / "__init__.py").is_file():
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from benchmarks import register_all

        register_all(group)
    return bench


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
