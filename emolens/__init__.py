"""emolens: emotion concepts inside language models, read through TransformerLens.

Public API (names kept stable; see README.md)::

    model = emolens.load_model("gemma-3-270m")
    vecs = emolens.fit_emotion_vectors(model)
    vecs.save("out/vectors.safetensors"); vecs = emolens.EmotionVectors.load("out/vectors.safetensors")
    with emolens.steer(model, vecs, "calm", alpha=0.1, layers=[8]): model(tokens)
    with emolens.ablate(model, vecs, ["calm"], layers="all"): model(tokens)
    for token in emolens.monitor(model, vecs, "Dear diary,", max_new_tokens=20): print(token.token, token.top)
    rows = emolens.sweep(model, vecs, prompts, ["happy"], [4, 8], [-0.25, 0.0, 0.25], targets=["happy"])
"""

from emolens.fit import fit_emotion_vectors
from emolens.models import chat_prompt, load_model
from emolens.monitor import monitor
from emolens.steer import TopPCs, ablate, steer
from emolens.sweep import sweep
from emolens.vectors import EmotionVectors

__all__ = [
    "EmotionVectors",
    "TopPCs",
    "ablate",
    "chat_prompt",
    "fit_emotion_vectors",
    "load_model",
    "monitor",
    "steer",
    "sweep",
]
__version__ = "0.1.0"
