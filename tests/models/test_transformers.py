"""Hugging Face transformers, built from tiny configs (no download): GPT-2, BERT with a classification head, ViT.

Needs the ``models`` extra (``pip install -e ".[models]"``); skipped with a reason without it.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub: every model comes from a config

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="4.40", reason="the `models` extra (transformers>=4.40) is not installed")

import nytorch_fn as nf  # noqa: E402
from tests.models import _checks as c  # noqa: E402

VOCAB = 61


# Attention: "eager" (plain matmuls, batched by vmap). The default "sdpa" runs too, but on CPU its
# flash kernel has no vmap batching rule: torch loops over the members with a warning (see below).
ATTENTION = "eager"


def gpt2(seed: int = 0, attention: str = ATTENTION):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=16,
                                     bos_token_id=0, eos_token_id=0, pad_token_id=0, attn_implementation=attention)
    return transformers.GPT2LMHeadModel(config).eval()


def bert(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3, pad_token_id=0,
                                     attn_implementation=ATTENTION)
    return transformers.BertForSequenceClassification(config).eval()


def vit(seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32, num_labels=4,
                                    attn_implementation=ATTENTION)
    return transformers.ViTForImageClassification(config).eval()


def text_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # the second sequence is padded
    return ids, mask


def squared(get):
    return lambda out: get(out).square().mean()


def test_gpt2_tied_embeddings_are_one_entry():
    model = gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    p = c.capture(model)
    assert "lm_head.weight" not in p.species.names and dict(p.species.tied) == {"lm_head.weight": "transformer.wte.weight"}
    # the tie survives: to_module ties the weights again, and an arithmetic result moves both
    module = nf.to_module(p * 2)
    assert module.lm_head.weight is module.transformer.wte.weight
    assert torch.equal(module.lm_head.weight, 2 * model.transformer.wte.weight)


def test_gpt2(tmp_path):
    model = gpt2()
    ids, mask = text_batch()
    kwargs = {"attention_mask": mask, "use_cache": False}
    p = c.capture(model)
    c.apply_matches_module(p, model, (ids,), kwargs, c.logits)
    pop = c.population(p)
    c.vmap_matches_loop(pop, (ids,), kwargs, c.logits)
    c.vmap_grad_matches_autograd(pop, squared(c.logits), (ids,), kwargs)
    c.merges_match_hand_computation(p, list(nf.unstack(pop)))
    c.checkpoint_round_trips(tmp_path, pop, lambda: gpt2(seed=1))
    c.nyto_wrapping_matches(gpt2(), p, (ids,), kwargs, c.logits)


def test_gpt2_attention_mask_is_honoured_per_member():
    model = gpt2()
    ids, mask = text_batch()
    pop = c.population(nf.particle(model))
    out = nf.vmap_apply(pop, ids, attention_mask=mask, use_cache=False).logits
    # what a padded position holds must not change the unpadded ones of any member
    other = ids.clone()
    other[1, 5:] = 1
    again = nf.vmap_apply(pop, other, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(again[:, 1, :5], out[:, 1, :5])
    assert not torch.allclose(again[:, 1, 5:], out[:, 1, 5:])


def test_bert_classifier(tmp_path):
    model = bert()
    ids, mask = text_batch(1)
    kwargs = {"attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    p = c.capture(model)
    assert p.species.names[-2:] == ("classifier.weight", "classifier.bias")
    c.apply_matches_module(p, model, (ids,), kwargs, c.logits)
    pop = c.population(p)
    c.vmap_matches_loop(pop, (ids,), kwargs, c.logits)
    labels = torch.tensor([0, 2])
    ce = lambda out: torch.nn.functional.cross_entropy(out.logits, labels)  # noqa: E731
    c.vmap_grad_matches_autograd(pop, ce, (ids,), kwargs)
    c.merges_match_hand_computation(p, list(nf.unstack(pop)))
    c.checkpoint_round_trips(tmp_path, pop, lambda: bert(seed=1))
    c.nyto_wrapping_matches(bert(), p, (ids,), kwargs, c.logits)


def test_vit(tmp_path):
    model = vit()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    p = c.capture(model)
    c.apply_matches_module(p, model, (pixels,), None, c.logits)
    pop = c.population(p)
    c.vmap_matches_loop(pop, (pixels,), None, c.logits)
    c.vmap_grad_matches_autograd(pop, squared(c.logits), (pixels,))
    c.merges_match_hand_computation(p, list(nf.unstack(pop)))
    c.checkpoint_round_trips(tmp_path, pop, lambda: vit(seed=1))
    c.nyto_wrapping_matches(vit(), p, (pixels,), None, c.logits)


def test_gpt2_with_sdpa_attention_runs_under_vmap_through_torchs_per_member_fallback():
    model = gpt2(attention="sdpa")
    ids, mask = text_batch()
    p = nf.particle(model)
    c.apply_matches_module(p, model, (ids,), {"attention_mask": mask, "use_cache": False}, c.logits, exact=False)
    pop = c.population(p)
    with pytest.warns(UserWarning, match="performance drop because we have not yet implemented the batching rule"):
        c.vmap_matches_loop(pop, (ids,), {"use_cache": False}, c.logits)
