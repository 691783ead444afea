"""The pipeline's record of its stages, written after every change so a crash leaves it honest."""

from __future__ import annotations

import json
import os
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from raysys.interrupts import INTERRUPTED
from raysys.layout import PIPELINE_STATE


class StageError(RuntimeError):
    """A pipeline stage failed; the message names the stage."""

    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"pipeline stage {stage!r} failed: {type(cause).__name__}: {cause}")
        self.stage = stage


class PipelineState:
    """Status of each stage (``pending``, ``running``, ``done``, ``failed``, ``interrupted``) and its outputs.

    The pipeline as a whole is ``complete`` only when every stage is done; a failure leaves
    the finished stages marked ``done`` with their outputs, the failed one ``failed`` with its
    error (``interrupted`` when Ctrl-C or SIGTERM stopped it), and the rest ``pending``.
    """

    def __init__(self, run_dir: str | os.PathLike, stages: list[str], config: dict[str, Any]):
        self.path = Path(run_dir) / PIPELINE_STATE
        self.data: dict[str, Any] = {
            "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": config,
            "stages": {name: {"status": "pending"} for name in stages},
        }
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Run one stage: yields its outputs dict to fill; records status, timing and errors."""
        record = self.data["stages"][name]
        record.update(status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.save()
        outputs: dict[str, Any] = {}
        start = time.time()
        try:
            yield outputs
        except BaseException as exc:
            status = "failed" if isinstance(exc, Exception) else INTERRUPTED  # Ctrl-C or SIGTERM
            record.update(status=status, error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc(), seconds=round(time.time() - start, 1))
            self.data["status"] = status
            self.data["failed_stage"] = name
            self.save()
            if isinstance(exc, Exception):
                raise StageError(name, exc) from exc
            raise
        record.update(status="done", outputs=outputs, seconds=round(time.time() - start, 1))
        self.save()

    def complete(self) -> None:
        self.data["status"] = "complete"
        self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.save()
