"""Benchmarks: `candor bench all` (side_by_side.py) and the standalone scripts (preprocessing.py).

`register_all` adds `all` to the `candor bench` group; the heavy modules load only when it runs, so the
CLI stays quick to start.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "faces"
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"


def register_all(bench_subparsers: Any) -> None:
    """Adds `all` (speed, accuracy and the peer, side by side) to the `candor bench` group."""
    parser = bench_subparsers.add_parser(
        "all", help="speed, accuracy and the peer side by side; updates docs/benchmarks.md"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled photos: enroll/, probe/, detect/")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the Markdown file to update")
    parser.add_argument("--rounds", type=int, default=2, help="times each photo goes through the pipeline")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--no-write", action="store_true", help="leave the Markdown file and charts alone")
    parser.set_defaults(run=_run_all)
    from benchmarks.search_index import register as register_search  # `search`, next to `all`

    register_search(bench_subparsers)
    from benchmarks.load import register as register_load  # `load`: 1,000 uploads through the local runtime

    register_load(bench_subparsers)
    from benchmarks.accuracy import register as register_accuracy  # `accuracy`: LFW, the similarity scale

    register_accuracy(bench_subparsers)
    from benchmarks.video import register as register_video  # `video`: stored-video jobs, speed and persons

    register_video(bench_subparsers)
    from benchmarks.live import register as register_live  # `live`: stream processors' latency

    register_live(bench_subparsers)


def _run_all(args: argparse.Namespace) -> int:
    from benchmarks.side_by_side import cmd_all

    return cmd_all(args)
