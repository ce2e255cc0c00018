"""Ctrl-C (SIGINT) and SIGTERM while training: the loop finishes the step in flight, saves it and stops.

A signal arriving mid-step, mid-validation or mid-save would otherwise stop the process wherever it is, losing
every step since the last checkpoint (or leaving a checkpoint half-written). Within ``StopRequests`` it only
records the request; the loop (train/loop.py ``run``) looks between steps, saves the last completed step and
raises ``Interrupted``, which the command line turns into the signal's conventional exit status without a
traceback (cli/entry.py). Imports no JAX: the command line's entry point imports this module.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal after saving its last completed step. A KeyboardInterrupt, so a study, a
    notebook or a test session stops as Ctrl-C always stopped it; ``status`` is the exit status of a process
    stopped by that signal (128 + its number: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"interrupted at step {step}: saved, resume with the same command")
        self.step = step
        self.status = 128 + signum


class StopRequests:
    """``with StopRequests() as stop:``: SIGINT and SIGTERM set ``stop.signum`` instead of acting at once.

    The handlers in place before come back on exit (a study or a notebook trains run after run) and on the first
    signal, so a second Ctrl-C stops at once, as it would outside training. Only the main thread can install
    handlers: in any other (a notebook's worker thread) signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Callable | int | None] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._request) for signum in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
