"""Run reports: `report.html` with samples, family pictures, loss curves, metrics beside their data-vs-data floor,
timings and the resolved config.

html.py lays out the page; plots.py draws the figures; text.py formats durations, rates and metric names (with
their one-line explanations); latents.py draws latent spaces; browser.py checks a page in headless Chromium.
"""

from genlab.report.html import write_report

__all__ = ["write_report"]
