"""Reports rebuilt from records alone: the frame, leaderboard and paper tables, the document (Markdown/HTML),
plots and significance tests. ``python -m benchmark.report DIR`` regenerates one."""
from benchmark.report.document import build_report, main

__all__ = ["build_report", "main"]
