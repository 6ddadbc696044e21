"""The CLI's log set-up: fishtune's lines on stdout, every library's warnings on stderr through
one format (not Python's last-resort handler), --quiet and --verbose."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from study.cli import main
from study.logs import NORMAL, QUIET, VERBOSE, configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    own = {name: logging.getLogger(name).level for name in ("study", "trainables", "analysis")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in own.items():
        logging.getLogger(name).setLevel(value)


def _emit() -> None:
    logging.getLogger("study.launcher").info("study x: running 4 trial(s)")
    logging.getLogger("study.launcher").debug("details")
    logging.getLogger("study.cluster").warning("no GPU node yet")
    logging.getLogger("somelib").info("library chatter")
    logging.getLogger("somelib").warning("library warning")


def test_default_info_to_stdout_warnings_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(NORMAL)
    _emit()
    out, err = capsys.readouterr()
    assert out == "study x: running 4 trial(s)\n"
    assert err == "warning: no GPU node yet\nwarning: library warning\n"


def test_quiet_keeps_only_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(QUIET)
    _emit()
    out, err = capsys.readouterr()
    assert out == "" and err == "warning: no GPU node yet\nwarning: library warning\n"


def test_verbose_adds_debug_and_library_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(VERBOSE)
    _emit()
    out, _ = capsys.readouterr()
    assert out.splitlines() == ["study x: running 4 trial(s)", "debug: study.launcher: details", "library chatter"]


def test_configuring_twice_keeps_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(NORMAL)
    configure_logging(NORMAL)
    logging.getLogger("study").info("once")
    assert capsys.readouterr().out == "once\n"


@pytest.mark.parametrize(
    ("flags", "level"), [([], logging.INFO), (["-q"], logging.WARNING), (["--verbose"], logging.DEBUG)]
)
def test_the_cli_flags_set_the_level(flags: list[str], level: int) -> None:
    assert main([*flags, "status", "Not/AName"]) == 2
    assert logging.getLogger("study").level == level


def test_quiet_and_verbose_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--quiet", "--verbose", "status", "x"])
    assert "not allowed with argument" in capsys.readouterr().err
