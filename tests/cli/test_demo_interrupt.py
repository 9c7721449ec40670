"""Ctrl-C in `simulacra demo` always stops it: a lost KeyboardInterrupt is raised again, and a watchdog ends it."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap

import pytest

from simulacra_services.cli.demo import Interrupt, Journal


def _requested(interrupt: Interrupt) -> None:
    """Deliver the first SIGINT to the handler, as the interpreter would, and let a library swallow it."""
    try:
        interrupt._on_signal(signal.SIGINT, None)
    except KeyboardInterrupt:
        pass  # what a library that loses the interrupt does


def test_an_interrupt_a_library_swallowed_is_raised_again_at_the_next_progress_line() -> None:
    out = io.StringIO()
    interrupt = Interrupt(out, grace=3600)
    journal = Journal(out, interrupt=interrupt)
    journal.say("before")
    _requested(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            journal.say("after the swallowed Ctrl-C")
        assert "after the swallowed" not in out.getvalue() and "before" in out.getvalue()
        interrupt.handled = True  # the demo's handler took it: progress lines print again
        journal.say("stopping")
        assert "stopping" in out.getvalue()
    finally:
        interrupt._forced.set()  # let the watchdog thread end without forcing an exit


def test_a_line_said_while_the_interrupt_is_on_its_way_up_does_not_raise_a_second_one() -> None:
    out = io.StringIO()
    interrupt = Interrupt(out, grace=3600)
    journal = Journal(out, interrupt=interrupt)
    try:
        with pytest.raises(KeyboardInterrupt) as raised:
            try:
                interrupt._on_signal(signal.SIGINT, None)
            except KeyboardInterrupt:
                journal.say("cancelling the training job")  # a handler's cleanup, then re-raise
                raise
        assert "cancelling the training job" in out.getvalue()
        assert raised.value.__context__ is None  # the original interrupt, not a second one raised in the cleanup
    finally:
        interrupt._forced.set()


def test_the_watchdog_stops_the_suite_and_exits_130_when_the_demo_does_not_stop(tmp_path) -> None:
    stopped = tmp_path / "suite-stopped"
    program = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from simulacra_services.cli.demo import Interrupt

        class Suite:
            def stop(self):
                open({str(stopped)!r}, "w").write("stopped")

        interrupt = Interrupt(sys.stdout, grace=1.0)
        interrupt.install(Suite())
        ready = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a demo whose interrupt is swallowed and never checked again
            try:
                if not ready:  # inside the try: the signal may come before print returns
                    ready = True
                    print("ready", flush=True)
                time.sleep(0.05)
            except KeyboardInterrupt:
                pass
        sys.exit(0)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "still running 1 s after Ctrl-C; stopping the suite and exiting" in out
    assert stopped.read_text() == "stopped"
