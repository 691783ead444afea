"""The end-to-end pipeline: data, sweep, ensemble, gates, registry, report.

Imported on first use, so ``raysys pipeline --help`` stays fast.
"""

from __future__ import annotations

from raysys._lazy import lazy_exports
_LAZY = {
    "PipelineConfig": "raysys.pipeline.config",
    "load_pipeline_config": "raysys.pipeline.config",
    "PipelineResult": "raysys.pipeline.runner",
    "run_pipeline": "raysys.pipeline.runner",
    "summary_lines": "raysys.pipeline.runner",
    "PipelineState": "raysys.pipeline.state",
    "StageError": "raysys.pipeline.state",
}

__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = list(_LAZY)
