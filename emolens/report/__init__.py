"""Self-contained HTML reports: every piece of text escaped, plots embedded as data URIs."""

from emolens.report.page import Page

__all__ = ["Page"]
