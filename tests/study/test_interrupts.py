"""Ctrl-C during a Tune run: recorded, then passed to Tune as SIGUSR1."""

from __future__ import annotations

import os
import signal

import pytest

from study.interrupts import TUNE_SIGINT, recorded_interrupt


def test_ctrl_c_is_recorded_and_handed_on_as_sigusr1_and_a_second_one_raises() -> None:
    seen: list[int] = []
    previous_usr1 = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))
    previous_int = signal.getsignal(signal.SIGINT)
    try:
        with recorded_interrupt() as stopped:
            assert os.environ[TUNE_SIGINT] == "1" and not stopped.is_set()
            os.kill(os.getpid(), signal.SIGINT)
            assert stopped.is_set() and seen == [signal.SIGUSR1]
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert TUNE_SIGINT not in os.environ and signal.getsignal(signal.SIGINT) is previous_int
    finally:
        signal.signal(signal.SIGUSR1, previous_usr1)


def test_without_ctrl_c_the_event_stays_unset() -> None:
    with recorded_interrupt() as stopped:
        pass
    assert not stopped.is_set()
