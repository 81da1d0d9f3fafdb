"""A Ctrl-C that lands in a finalizer or a garbage-collection callback (where Python can only print it) is
raised at the CLI's next safe point instead of being lost."""

from __future__ import annotations

import io
import sys

import pytest

from bitnet_jax.cli._common import Interrupts, write_flushed


class _RaisesOnDelete:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __del__(self) -> None:
        raise self.error


def test_an_interrupt_python_could_only_print_is_raised_at_the_next_check():
    guard = Interrupts()
    with guard:
        _RaisesOnDelete(KeyboardInterrupt())  # dropped at once: its __del__ raises where nothing can catch it
        assert guard.pending
        with pytest.raises(KeyboardInterrupt):
            guard.check()
        guard.check()  # raised once, then cleared


def test_other_unraisable_errors_still_reach_the_previous_hook(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(type(u.exc_value)))
    guard = Interrupts()
    with guard:
        _RaisesOnDelete(ValueError("x"))
    assert seen == [ValueError] and not guard.pending
    assert sys.unraisablehook is not guard._hook  # removed on exit


def test_write_flushed_raises_a_pending_interrupt(monkeypatch):
    from bitnet_jax.cli import _common

    monkeypatch.setattr(_common.INTERRUPTS, "pending", True)
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        write_flushed(out, "token")
    assert out.getvalue() == ""
    write_flushed(out, "token")
    assert out.getvalue() == "token"
