"""Run reports: `report.html` with the resolved config, loss curves, samples, family pictures and timings."""

from genlab.report.html import write_report

__all__ = ["write_report"]
