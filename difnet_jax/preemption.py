"""Graceful stops: SIGTERM (preemption, `kill`, SLURM/TPU maintenance) or SIGINT (Ctrl-C)
during training ask the loop to finish its current step, save a checkpoint and return."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopRequests:
    """Context manager that turns SIGTERM/SIGINT into a flag the training loop polls."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame):
        del frame
        if self.requested:  # A second signal: give up waiting for the step.
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: finishing the current step, then saving a checkpoint.", self.signal_name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
