"""Interrupted work: SIGTERM (what Kubernetes sends on every rollout) handled like Ctrl-C, and how
an interrupted run is recorded, so that a RayJob never reads an interrupted run as SUCCEEDED.

A command that is stopped keeps its last checkpoint, marks its MLflow run ``KILLED`` with the tag
``raysys.status = interrupted`` (never ``FINISHED``) and exits with :data:`EXIT_INTERRUPTED`.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

#: The tag value (``raysys.status``) and state-record status of a run stopped by Ctrl-C or SIGTERM.
INTERRUPTED = "interrupted"
STATUS_TAG = "raysys.status"
#: Exit code of an interrupted command (128 + SIGINT, as a shell reports Ctrl-C).
EXIT_INTERRUPTED = 130


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


def sigterm_as_ctrl_c() -> None:
    """From now on SIGTERM raises ``KeyboardInterrupt`` in the main thread, as Ctrl-C does.

    Call it after ``ray.init``, which installs a SIGTERM handler of its own that exits at once.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def mlflow_status(exc: BaseException) -> str:
    """The MLflow run status for a run that ended with ``exc``: ``KILLED`` when interrupted, else ``FAILED``."""
    return "FAILED" if isinstance(exc, Exception) else "KILLED"
