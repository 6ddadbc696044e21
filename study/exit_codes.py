"""Exit status of the fishtune CLI (design.md §1): the codes, the one :class:`Outcome` a command
ends with, and the policy that turns how a launch ended into one (:func:`launch_outcome`).

Imported by the CLI before Ray is: nothing here may import Ray, Optuna or MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

OK = 0  # the study finished (completed, early-stopped and diverged trials are results)
FAILED = 1  # a trial failed, or the study could not go on
USER_ERROR = 2  # a mistake in the command or spec: nothing started or written
INTERRUPTED = 130  # SIGINT/SIGTERM: state saved, `fishtune resume NAME` continues


class CannotGoOn(Exception):
    """The study cannot go on for a reason outside the spec and the code (a machine too busy to
    start Ray): exit 1 with one line, the traceback only with ``--debug``."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The exit status of a command and the one line that says why."""

    code: int
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchEnd:
    """How a launch's ``Tuner.fit`` ended, as far as the exit status cares."""

    interrupted: bool  # fewer trials ended than the launch asked for
    unwritten: int = 0  # MLflow writes kept on disk for the next launch
    refused: int = 0  # MLflow writes the store refused for good
    failed: int = 0  # trials that errored or reported a failure


def launch_outcome(study: str, end: LaunchEnd, tracking_uri: str, unwritten_path: str) -> Outcome:
    """Interrupted beats everything (exit 130, the state is saved); then MLflow's data, which
    must all be in the store for the study to count as finished; then the trials' own outcome."""
    kept = (
        f"; the MLflow store {tracking_uri} did not take {end.unwritten} write(s): they are kept in "
        f"{unwritten_path} and written by the next `fishtune resume {study}` or `fishtune run`"
        if end.unwritten
        else ""
    )
    if end.interrupted:
        return Outcome(
            INTERRUPTED, f"study {study} interrupted; state saved. Continue with: fishtune resume {study}{kept}"
        )
    if end.unwritten:
        return Outcome(FAILED, f"study {study} finished{kept}")
    if end.refused:
        return Outcome(FAILED, f"study {study} finished; MLflow refused {end.refused} write(s) (errors above)")
    if end.failed:
        return Outcome(FAILED, f"study {study} finished; {end.failed} trial(s) failed (errors above)")
    return Outcome(OK, f"study {study} finished")
