"""Self-contained HTML reports: every piece of text escaped, plots and circuitsvis views inline, no network."""

from emolens.report.page import Page
from emolens.report.views import attention_heads, colored_tokens_multi, readings_by_emotion, side_by_side

__all__ = ["Page", "attention_heads", "colored_tokens_multi", "readings_by_emotion", "side_by_side"]
