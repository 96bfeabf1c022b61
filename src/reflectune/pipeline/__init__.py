"""The whole method from one file (L4): ``reflectune run pipeline.yaml``, resumable end to end.

``load`` turns a pipeline file into a ``RunConfig`` (errors with file, line and key path), ``run``
chains the stage verbs and skips what is up to date, ``lineage`` is the pipeline folder's manifest,
``plan`` the dry run.
"""

from reflectune.pipeline.load import load_run_config
from reflectune.pipeline.run import PipelineResult, StageResult, run, stage_range

__all__ = ["PipelineResult", "StageResult", "load_run_config", "run", "stage_range"]
