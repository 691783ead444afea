"""The end-to-end pipeline: data, sweep, ensemble, gates, registry, report."""

from raysys.pipeline.config import PipelineConfig, load_pipeline_config
from raysys.pipeline.runner import PipelineResult, run_pipeline, summary_lines
from raysys.pipeline.state import PipelineState, StageError

__all__ = ["PipelineConfig", "PipelineResult", "PipelineState", "StageError", "load_pipeline_config",
           "run_pipeline", "summary_lines"]
