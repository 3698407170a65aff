"""emolens: emotion concepts inside language models, read through TransformerLens.

Public API (names kept stable; see README.md)::

    model = emolens.load_model("gemma-3-270m")
    vecs = emolens.fit_emotion_vectors(model)
    vecs.save("out/vectors.safetensors"); vecs = emolens.EmotionVectors.load("out/vectors.safetensors")
"""

from emolens.fit import fit_emotion_vectors
from emolens.models import chat_prompt, load_model
from emolens.vectors import EmotionVectors

__all__ = ["EmotionVectors", "chat_prompt", "fit_emotion_vectors", "load_model"]
__version__ = "0.1.0"
