import pytest
import torch

from code import CollaborativeDecoder, collaborative_generate, var_generate
from tiny import tiny_var_like
from models import build_var


@pytest.mark.parametrize("greedy", [False, True])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_one_model_in_both_roles_is_plain_var(pair, n, greedy):
    vae, var = pair
    kw = dict(seed=4, greedy=greedy, cfg=1.5, top_k=[0, 5, 20, 3], top_p=0.9, temperature=[1.1, 1.1, 1.0, 1.0])
    img, tokens = var_generate(var, vae, [0, 3, 7], return_tokens=True, **kw)
    img2, tokens2 = collaborative_generate(var, var, vae, [0, 3, 7], draft_steps=n, return_tokens=True, **kw)
    assert torch.equal(img, img2)
    assert all(torch.equal(a, b) for a, b in zip(tokens, tokens2))


def test_chain_of_three_models_is_the_same_code(pair):
    vae, var = pair
    plain = var_generate(var, vae, [1, 2], seed=9)
    assert torch.equal(CollaborativeDecoder(vae, [var, var, var], [1, 3])([1, 2], seed=9), plain)
    mid, small = tiny_var_like(vae, 3, seed=3), tiny_var_like(vae, 1, seed=4)
    state = CollaborativeDecoder(vae, [var, mid, small], [1, 3]).state([1, 2], seed=9, keep_logits=True)
    assert [t.shape[1] for t in state.tokens] == [1, 4, 9, 16]
    # the drafter's scale is kept; later scales come from the other models
    assert torch.equal(state.tokens[0], var_generate(var, vae, [1, 2], seed=9, return_tokens=True)[1][0].flatten(1))


def test_different_refiner_changes_only_later_scales(pair):
    vae, drafter = pair
    refiner = tiny_var_like(vae, depth=1, seed=12)
    _, plain = var_generate(drafter, vae, [5, 6], seed=0, return_tokens=True, greedy=True)
    _, code = collaborative_generate(drafter, refiner, vae, [5, 6], draft_steps=2, seed=0, return_tokens=True,
                                     greedy=True)
    assert torch.equal(plain[0], code[0]) and torch.equal(plain[1], code[1])
    assert not all(torch.equal(a, b) for a, b in zip(plain[2:], code[2:]))


@pytest.mark.parametrize("bad", [-1, 5, 2.5])
def test_draft_steps_out_of_range(pair, bad):
    vae, var = pair
    with pytest.raises(ValueError, match="draft_steps"):
        collaborative_generate(var, var, vae, [1], draft_steps=bad)


def test_chain_needs_matching_boundaries(pair):
    vae, var = pair
    with pytest.raises(ValueError, match="draft_steps"):
        CollaborativeDecoder(vae, [var, var, var], 2)
    with pytest.raises(ValueError, match="must not decrease"):
        CollaborativeDecoder(vae, [var, var, var], [3, 1])


@pytest.mark.parametrize("field,value,match", [("vocab_size", 32, "vocab_size"), ("patch_nums", (1, 2, 4), "patch_nums"),
                                               ("cvae", 4, "Cvae"), ("num_classes", 20, "classes")])
def test_mismatched_tokenizers_rejected(pair, field, value, match):
    vae, var = pair
    c = vae.config
    kw = dict(width=64, heads=2, num_classes=10, vocab_size=c.vocab_size, cvae=c.z_channels, patch_nums=c.patch_nums)
    other = build_var(1, **{**kw, field: value})
    with pytest.raises(ValueError, match=match):
        collaborative_generate(var, other, vae, [1], draft_steps=2)


def test_fast_means_the_same_in_every_call(pair):
    """False and None are the eager path in state(), decode() and __call__ alike."""
    vae, var = pair
    decoder = CollaborativeDecoder(vae, [var])
    state = decoder.state([1, 2], seed=3, fast=None)
    assert torch.equal(state.f_hat, decoder.state([1, 2], seed=3, fast=False).f_hat)
    eager = decoder.decode(state.f_hat)
    assert torch.equal(decoder.decode(state.f_hat, fast=False), eager)
    assert torch.equal(decoder.decode(state.f_hat, fast=None), eager)
    assert torch.equal(decoder([1, 2], seed=3, fast=None), eager)
