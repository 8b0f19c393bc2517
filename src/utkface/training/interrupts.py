"""Ctrl-C during training: finish the optimizer step under way, then stop and save."""

from __future__ import annotations

import signal
import threading


class DeferredInterrupt:
    """Holds a Ctrl-C (SIGINT) until the optimizer step under way is complete, so the `last.pt`
    saved on interrupt never holds a half-applied step; a second Ctrl-C stops at once, and then
    nothing is saved. Outside the main thread (no signal handlers there) it does nothing.

    Under torchrun, a Ctrl-C reaches torchrun, which passes one SIGINT on to its workers (they
    run in sessions of their own), so each rank sees one press."""

    def __enter__(self) -> DeferredInterrupt:
        self.requested = self.forced = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            self.forced = True
            raise KeyboardInterrupt
        self.requested = True

    def request(self) -> None:
        """Stop before the next step, as if Ctrl-C had been pressed once."""
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
