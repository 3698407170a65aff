"""Direct attribution: exact decomposition (LN and Gemma-like post-norm models), ablation hooks, the experiment."""

from __future__ import annotations

import json
import warnings

import einops
import numpy as np
import pytest
import torch
from helpers import check_estimate
from transformer_lens import HookedTransformer, HookedTransformerConfig

from emolens.attribution import (
    AblationMasks,
    Component,
    ablated_readings,
    component_means,
    components,
    direct_contributions,
)
from emolens.corpus import load_stories
from emolens.experiments import attribution
from emolens.extract import batches
from emolens.models import byte_tokenizer
from emolens.report.page import Page
from emolens.vectors import EmotionVectors

EMOTIONS = ["afraid", "calm", "happy", "joyful", "sad"]


def gemma_like_model() -> HookedTransformer:
    """Tiny RMS-norm model with post-attention/MLP norms and grouped-query attention, like Gemma 3."""
    tokenizer = byte_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, d_head=8, n_heads=4, n_key_value_heads=2, d_mlp=64, d_vocab=len(tokenizer),
        n_ctx=256, act_fn="gelu", normalization_type="RMS", use_normalization_before_and_after=True,
        positional_embedding_type="rotary", seed=1, device="cpu",
    )  # fmt: skip
    with warnings.catch_warnings():  # TransformerLens' notice about its next major version
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    with torch.no_grad():  # non-trivial post-norm gains and attention biases
        for block in model.blocks:
            block.ln1_post.w.uniform_(0.5, 1.5)
            block.attn.b_O.normal_(0, 0.1)
    model.eval()
    return model


def random_vectors(model: HookedTransformer, seed: int = 0) -> EmotionVectors:
    generator = torch.Generator().manual_seed(seed)
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    raw = torch.randn(n_layers, len(EMOTIONS), d_model, generator=generator)
    return EmotionVectors(
        emotions=EMOTIONS,
        layers=list(range(n_layers)),
        vectors=raw / raw.norm(dim=-1, keepdim=True),
        center=torch.randn(n_layers, d_model, generator=generator),
        resid_norms=torch.ones(n_layers),
        default_layer=1,
    )


@pytest.fixture(scope="module")
def story_batch(tiny_model):
    """Mixed-length validation stories in one right-padded batch, window from token 20."""
    stories = [s for s in load_stories(split="validation") if s.emotion in EMOTIONS][:4]
    batch = batches(tiny_model, [s.text[: 80 + 40 * i] for i, s in enumerate(stories)], window_start=20)[0]
    return batch, [stories[i].emotion for i in batch.indices]


@pytest.mark.parametrize("which", ["tiny", "gemma_like"])
@pytest.mark.parametrize("layer", [0, 2])
def test_contributions_sum_to_reading(tiny_model, story_batch, which, layer):
    model = tiny_model if which == "tiny" else gemma_like_model()
    vecs = random_vectors(model)
    batch, labels = story_batch
    contributions, readings = direct_contributions(model, vecs, batch.tokens, labels, batch.window.float(), layer)
    assert contributions.shape == (len(labels), len(components(model, layer)))
    assert torch.allclose(contributions.sum(dim=1), readings.double(), atol=1e-4)
    # the readings are the raw window-mean projection of each text run alone (no padding)
    for row, label in enumerate(labels):
        length = int((batch.tokens[row] != 0).sum())  # pad id 0 never occurs in byte-tokenized text
        _, cache = model.run_with_cache(batch.tokens[row : row + 1, :length])
        alone = vecs.project(cache[f"blocks.{layer}.hook_resid_post"][0], layer)[:, vecs.emotions.index(label)]
        assert float(alone[batch.window[row, :length]].mean()) == pytest.approx(float(readings[row]), abs=1e-4)


def test_heads_and_bias_add_up_to_each_attention_output(story_batch):
    """Per layer, the head + bias columns equal the projection of hook_attn_out (the post-norm output)."""
    model = gemma_like_model()
    vecs = random_vectors(model, seed=3)
    batch, labels = story_batch
    weights = batch.window.float()
    contributions, _ = direct_contributions(model, vecs, batch.tokens, labels, weights, 2)
    parts = components(model, 2)
    _, cache = model.run_with_cache(batch.tokens)
    directions = torch.stack([vecs.direction(e, 2) for e in labels])
    normalised = weights / weights.sum(dim=1, keepdim=True)
    for block in range(3):
        expected = einops.einsum(cache[f"blocks.{block}.hook_attn_out"], normalised, directions, "b p d, b p, b d -> b")
        columns = [i for i, c in enumerate(parts) if c.layer == block and c.kind in ("head", "attn_bias")]
        assert torch.allclose(contributions[:, columns].sum(dim=1).float(), expected, atol=1e-4)


def test_zero_ablating_every_head_and_mlp_leaves_embedding_bias_and_centre(tiny_model, story_batch):
    vecs = random_vectors(tiny_model)
    batch, labels = story_batch
    weights = batch.window.float()
    contributions, readings = direct_contributions(tiny_model, vecs, batch.tokens, labels, weights, 2)
    parts = components(tiny_model, 2)
    removable = [c for c in parts if c.ablatable]
    nothing = ablated_readings(tiny_model, vecs, batch.tokens, labels, weights, AblationMasks({}, {}), layer=2)
    assert torch.allclose(nothing, readings, atol=1e-5)
    masks = AblationMasks.from_components(tiny_model, [removable] + [[]] * (len(labels) - 1))
    ablated = ablated_readings(tiny_model, vecs, batch.tokens, labels, weights, masks, layer=2)
    kept = [i for i, c in enumerate(parts) if not c.ablatable]
    assert float(ablated[0]) == pytest.approx(float(contributions[0, kept].sum()), abs=1e-4)
    assert torch.allclose(ablated[1:], readings[1:], atol=1e-5)  # other rows untouched
    assert abs(float(ablated[0] - readings[0])) > 1e-3


def test_mean_ablation_uses_reference_means(tiny_model, story_batch):
    vecs = random_vectors(tiny_model)
    batch, labels = story_batch
    weights = batch.window.float()
    means = component_means(tiny_model, batch.tokens, weights, 1)
    assert means["blocks.1.attn.hook_z"].shape == (4, tiny_model.cfg.d_head)
    masks = AblationMasks.from_components(tiny_model, [[Component("mlp", 1)]] * len(labels))
    zero = ablated_readings(tiny_model, vecs, batch.tokens, labels, weights, masks, layer=1)
    mean = ablated_readings(tiny_model, vecs, batch.tokens, labels, weights, masks, means, layer=1)
    assert not torch.allclose(zero, mean)


def test_bad_input(tiny_model):
    with pytest.raises(ValueError, match="out of range"):
        components(tiny_model, 7)
    with pytest.raises(ValueError, match="cannot be ablated"):
        AblationMasks.from_components(tiny_model, [[Component("embed")]])


def test_attribution_quick_on_tiny_model(tiny_model, tiny_vectors):
    data = json.loads(json.dumps(attribution.run(tiny_model, tiny_vectors, profile="quick").to_dict()))
    assert [e["emotion"] for e in data["emotions"]] == ["happy", "calm", "sad"]
    assert data["decomposition_max_error"] < 1e-4
    for emotion in data["emotions"]:
        check_estimate(emotion["reading_validation"])
        assert len(emotion["heads"]) == 2
        for head in emotion["heads"]:
            check_estimate(head["train"])
            check_estimate(head["validation"])
    assert [r["k"] for r in data["ablation_by_k"]] == [1, 3]
    for row in data["ablation_by_k"]:
        for key in ("top", "random", "difference", "direct_share"):
            check_estimate(row[key])
        assert len(row["random_draws"]) == 2
    assert [r["layer"] for r in data["per_layer"]] == list(range(tiny_vectors.default_layer + 1))
    total = sum(r["mass"]["value"] for r in data["per_layer"]) + data["embed_mass"]["value"]
    assert total == pytest.approx(1.0, abs=1e-4)
    for example in data["attention"]:
        patterns = np.asarray(example["patterns"])
        assert patterns.shape == (2, len(example["tokens"]), len(example["tokens"]))
        assert np.allclose(patterns.sum(axis=-1), 1.0, atol=1e-3)
    page = Page("attribution")
    attribution.render(page, data)
    assert "AttentionHeads" in page.render()
