"""Every entry point logs through one handler that follows ``sys.stderr``."""

from __future__ import annotations

import io
import logging
import sys

from core.logs import StderrHandler, configure_logging


def test_the_handler_writes_to_the_stderr_of_the_moment_never_a_closed_one(monkeypatch):
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging(logging.INFO, "%(message)s", None)
    logging.getLogger("preprocess.test").info("one")
    first.close()  # what a finished test's capture does to the stream it handed out
    monkeypatch.setattr(sys, "stderr", second)
    logging.getLogger("preprocess.test").info("two")
    assert second.getvalue() == "two\n"


def test_configuring_twice_leaves_one_handler_at_the_new_level(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging(logging.INFO, "a %(message)s", None)
    configure_logging(logging.WARNING, "b %(message)s", None)
    root = logging.getLogger()
    assert [type(h) for h in root.handlers if isinstance(h, StderrHandler)] == [StderrHandler]
    logging.getLogger("preprocess.test").info("hidden")
    logging.getLogger("preprocess.test").warning("shown")
    assert stream.getvalue() == "b shown\n"


def test_a_handler_someone_else_installed_is_left_in_place(caplog):
    configure_logging(logging.INFO, "%(message)s", None)
    logging.getLogger("preprocess.test").warning("seen by the capture")
    assert "seen by the capture" in caplog.text
