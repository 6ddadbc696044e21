"""The CLI's one log set-up: fishtune's own messages at INFO on stdout as plain lines (what a
command reports as it goes), warnings and errors from any library on stderr as ``warning: …``."""

from __future__ import annotations

import logging
import sys

PACKAGES = ("study", "trainables", "analysis")
QUIET, NORMAL, VERBOSE = -1, 0, 1
_OWN_LEVEL = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}


class _Console(logging.Handler):
    """Looks the streams up at each record, so that it writes where ``sys.stdout`` and
    ``sys.stderr`` are now (pytest's capture, a notebook), not where they were at set-up."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        if record.levelno < logging.INFO:
            return f"debug: {record.name}: {message}"
        return message


def configure_logging(verbosity: int = NORMAL) -> None:
    """Install the console handler on the root logger (once: a second call replaces it).

    Other libraries' records reach it from WARNING up (from INFO up with ``VERBOSE``); Ray and
    MLflow keep the handlers they install on their own loggers.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Console)]:
        root.removeHandler(handler)
    handler = _Console()
    handler.setFormatter(_Format())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbosity >= VERBOSE else logging.WARNING)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(_OWN_LEVEL[verbosity])
