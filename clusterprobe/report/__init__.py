"""Reports: discover runs, fill the extraction/metrics caches, draw the paper's figures, write HTML."""

from .build import ReportResult, ReportSettings, build_report
from .discovery import Run, discover_runs

__all__ = ["ReportResult", "ReportSettings", "Run", "build_report", "discover_runs"]
