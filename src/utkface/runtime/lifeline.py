"""Worker processes that end with their parent, however the parent ended (issue 22).

A pool worker waits on its task queue and never learns that the parent is gone: the queue's
pipe stays open in its sibling workers, so a parent killed with SIGKILL (as the OOM killer
does) used to leave its workers behind for good, hundreds of MB each. Every process pool of
the package is therefore made like this:

    pool = ProcessPoolExecutor(n, initializer=lifeline.Lifeline.here().hold)   # in the parent

`Lifeline.here()` notes, in the parent, its pid and whether this is its main thread; `hold()`
runs first in each worker and ties the worker to that parent:

- on Linux, for a worker started by the main thread, the kernel kills the worker the moment the
  parent ends (`prctl(PR_SET_PDEATHSIG, SIGKILL)`). The signal follows the *thread* that started
  the worker, and only the main thread lasts as long as the process, so
- for a worker started by another thread, and on other systems, a daemon thread in the worker
  checks every second whether the parent is still there and ends the worker (`os._exit`) if not.

The parent may already be gone when `hold` runs (it can die between starting the worker and the
`prctl`): that is checked once at once, after the `prctl`. The worker must be the parent's own
child (start methods fork and spawn; under forkserver its parent is the fork server).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 1.0
ORPHAN_EXIT_CODE = 137  # what a worker ends with when the parent is gone (128 + SIGKILL)


@dataclass(frozen=True)
class Lifeline:
    """What a worker needs to follow its parent: picklable, so spawned workers get it too."""

    parent: int  # the pid the worker must not outlive
    main_thread: bool  # started by the parent's main thread, which lasts as long as the parent

    @classmethod
    def here(cls) -> Lifeline:
        """The lifeline to this process, for workers started from the calling thread."""
        return cls(os.getpid(), threading.current_thread() is threading.main_thread())

    def hold(self) -> None:
        """Run in the worker, first: end it when the parent ends (see the module docstring)."""
        if not (self.main_thread and _kill_with_parent()):
            thread = threading.Thread(target=self._watch, name="utkface-lifeline", daemon=True)
            thread.start()
        if self.parent_gone():
            os._exit(ORPHAN_EXIT_CODE)

    def parent_gone(self) -> bool:
        if os.name == "nt":  # Windows gives an orphan no new parent: ask the process handle
            parent = multiprocessing.parent_process()
            return parent is not None and not parent.is_alive()
        return os.getppid() != self.parent  # an orphan is adopted by init or a subreaper

    def _watch(self) -> None:
        while not self.parent_gone():
            time.sleep(POLL_SECONDS)
        os._exit(ORPHAN_EXIT_CODE)


def _kill_with_parent() -> bool:
    """Ask Linux for SIGKILL when the parent thread ends; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc symbols (a static build): poll instead
        return False
