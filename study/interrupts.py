"""Know for certain whether a Tune run was interrupted.

Tune stops on Ctrl-C by its own SIGINT handler, saves its state and returns from ``fit()`` as if
the run had ended, and says so only in a log line. Counting finished trials afterwards cannot
tell an interrupted launch from a finished one once every trial of it has started: Tune's
clean-up marks the running ones terminated, and the launch looked finished (exit 0, nothing to
resume, its running trials lost). So the driver takes Ctrl-C itself, records it, and hands it to
Tune as SIGUSR1, the other signal Tune stops on the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

TUNE_SIGINT = "TUNE_DISABLE_SIGINT_HANDLER"  # read by Tune when fit() starts


@contextlib.contextmanager
def recorded_interrupt() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C (or SIGTERM, which the CLI turns into one) while the
    block runs; a second Ctrl-C raises KeyboardInterrupt as usual. Outside the main thread (no
    signal handlers there) or without SIGUSR1 the event stays unset and Tune handles Ctrl-C."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGUSR1"):
        yield interrupted
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        os.kill(os.getpid(), signal.SIGUSR1)

    previous_handler, previous_env = signal.signal(signal.SIGINT, on_sigint), os.environ.get(TUNE_SIGINT)
    os.environ[TUNE_SIGINT] = "1"
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        if previous_env is None:
            os.environ.pop(TUNE_SIGINT, None)
        else:
            os.environ[TUNE_SIGINT] = previous_env
