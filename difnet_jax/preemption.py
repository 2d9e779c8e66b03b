"""Graceful stops: SIGTERM (preemption, `kill`, SLURM/TPU maintenance) or SIGINT (Ctrl-C)
during training ask the run to stop at the next safe point, save a checkpoint and return.

The signal handler only sets a flag; the run looks at it at safe points: after each step
(the step is reported and checkpointed), between the stages of setting up, and before each
image an evaluation reads (`checked`, so a long evaluation stops within a batch; the resumed
run evaluates that step again). `check()` turns the flag into `Interrupted` there. The
handler never raises into the code it interrupts: JAX's compiler lets a raising signal
handler abandon a compilation still running in its thread, and the interpreter then
crashes at exit (seen here: a segmentation fault when the abandoned compilation ended). A second signal raises
KeyboardInterrupt at once (the user insists: stop waiting).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger(__name__)


class Interrupted(BaseException):
    """Raised by `StopRequests.check()` at a safe point once a stop was requested.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it.
    """


class StopRequests:
    """Context manager that turns SIGTERM/SIGINT into a flag the training loop polls."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def check(self) -> None:
        """Raises `Interrupted` if a stop was requested."""
        if self.requested:
            raise Interrupted(self.signal_name)

    @contextlib.contextmanager
    def stage(self):
        """A block of setting up or compiling: `check()` on entering it and on leaving it."""
        self.check()
        yield
        self.check()

    def checked(self, source):
        """`source` (len and indexing, as the evaluator reads it) with `check()` before every read."""
        return _CheckedSource(source, self)

    def _handle(self, signum, frame):
        del frame
        if self.requested:  # A second signal: give up waiting.
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: stopping at the end of the current step, compilation or evaluation batch.",
                    self.signal_name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class _CheckedSource:
    """A random-access data source that honours a pending stop request before each read."""

    def __init__(self, source, stop: StopRequests):
        self._source, self._stop = source, stop

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        self._stop.check()
        return self._source[index]

    def __getattr__(self, name):
        return getattr(self._source, name)
