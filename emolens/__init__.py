"""emolens: emotion concepts inside language models, read and steered through TransformerLens.

Public API (names kept stable; see README.md)::

    model = emolens.load_model("gemma-3-270m")
"""

from emolens.models import chat_prompt, load_model

__all__ = ["chat_prompt", "load_model"]
__version__ = "0.1.0"
