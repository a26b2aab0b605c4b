"""Reporting: run directories, progress, pseudo-label quality, tables, plots.

``plots`` imports matplotlib lazily (optional extra ``clapjax[plots]``).
"""

from clapjax.report import progress, quality, rundir, tables
from clapjax.report.progress import Reporter
from clapjax.report.quality import participant_segment_quality, participant_video_accuracy, segment_quality, video_accuracy
from clapjax.report.rundir import RunDir, RunDirError, prepare

__all__ = [
    "Reporter",
    "RunDir",
    "RunDirError",
    "participant_segment_quality",
    "participant_video_accuracy",
    "prepare",
    "progress",
    "quality",
    "rundir",
    "segment_quality",
    "tables",
    "video_accuracy",
]
