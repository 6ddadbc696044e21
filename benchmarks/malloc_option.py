"""``--system-malloc``: the benchmarks run with malloc set as a trial sets it, unless told not to."""

from __future__ import annotations

import argparse

from trainables.allocator import keep_freed_memory


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds as they are (a trial raises them: trainables/allocator.py)",
    )


def apply(args: argparse.Namespace) -> str:
    """Set malloc as the options say; what the benchmark's header line says of it."""
    if not args.system_malloc and keep_freed_memory():
        return "malloc keeping freed memory, as a trial does"
    return "malloc as the system set it"
