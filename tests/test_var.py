import pytest
import torch

from tiny import tiny_pair, tiny_var_like
from code import CollaborativeDecoder, DecodeState, SamplingConfig, TokenEdit, run_scales, var_generate
from models.scales import token_offsets


def teacher_forced_logits(var, vae, state):
    """One block-causal pass over the generated tokens, CFG-doubled like generation."""
    labels = torch.cat((state.labels, torch.full_like(state.labels, var.config.num_classes)))
    inputs = vae.tokens_to_var_input(state.tokens).repeat(2, 1, 1)
    return var(labels, inputs)


@pytest.mark.parametrize("greedy", [True, False])
def test_kv_cached_generation_matches_teacher_forcing(pair64, greedy):
    vae, var = pair64
    state = CollaborativeDecoder(vae, [var], []).state([0, 5, 9], seed=3, keep_logits=True, greedy=greedy, cfg=2.0)
    full = teacher_forced_logits(var, vae, state)
    torch.testing.assert_close(torch.cat(state.logits, 1), full, rtol=1e-10, atol=1e-10)


def test_teacher_forcing_is_block_causal(pair64):
    vae, var = pair64
    labels = torch.tensor([1, 2])
    inputs = torch.randn(2, 29, 8, dtype=torch.float64)
    full = var(labels, inputs)
    assert full.shape == (2, 30, 64) and full.dtype == torch.float64
    prefix = var(labels, inputs, stop_scale=2)  # scales 0..1 only
    torch.testing.assert_close(prefix, full[:, :5], rtol=1e-12, atol=1e-12)
    changed = inputs.clone()
    changed[:, 4:] += 1  # inputs of scales 2 and 3 (tokens 5.. of the sequence)
    torch.testing.assert_close(var(labels, changed)[:, :5], full[:, :5], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(var(labels, changed)[:, 5:], full[:, 5:])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_refiner_prefill_matches_incremental(n):
    vae, drafter = tiny_pair(dtype=torch.float64)
    refiner = tiny_var_like(vae, depth=3, seed=7, dtype=torch.float64)
    # the refiner takes the drafter's n scales in one prefill pass and predicts scale n ...
    code = CollaborativeDecoder(vae, [drafter, refiner], [n]).state([3, 4], seed=1, keep_logits=True)
    # ... versus the refiner consuming the same prefix scale by scale through its cache
    forced = TokenEdit(code.tokens, [torch.zeros_like(t, dtype=torch.bool) for t in code.tokens])
    replay = DecodeState(code.labels, vae.quantize.zeros_fhat(2), logits=[], edit=forced)
    run_scales(refiner, vae, replay, n + 1, SamplingConfig())
    assert [torch.equal(a, b) for a, b in zip(replay.tokens, code.tokens)] == [True] * (n + 1)
    torch.testing.assert_close(code.logits[n], replay.logits[n], rtol=1e-10, atol=1e-10)


def test_cache_holds_exactly_the_needed_scales(pair):
    vae, var = pair
    refiner = tiny_var_like(vae, depth=1, seed=5)
    offs = token_offsets(vae.patch_nums)
    events = []
    for m, name in ((var, "drafter"), (refiner, "refiner")):
        def setup(batch, length, dtype, device, _m=m, _name=name, _orig=m.setup_cache):
            events.append((_name, "setup", batch, length, var.cache_length, refiner.cache_length))
            _orig(batch, length, dtype, device)

        def free(_m=m, _name=name, _orig=m.free_cache):
            _orig()
            events.append((_name, "free"))
        m.setup_cache, m.free_cache = setup, free
    CollaborativeDecoder(vae, [var, refiner], [2]).state([1, 2, 3], seed=0)
    # drafter runs scales 0,1: caches scale 0 only; refiner runs 2,3: caches scales 0..2, never scale 3
    assert events == [("drafter", "setup", 6, offs[1], None, None), ("drafter", "free"),
                      ("refiner", "setup", 6, offs[3], None, None), ("refiner", "free")]
    assert var.cache_length is None and refiner.cache_length is None


def test_single_model_cache_excludes_last_scale(pair):
    vae, var = pair
    seen = []
    orig = var.setup_cache
    var.setup_cache = lambda b, n, dt, dev: (seen.append(n), orig(b, n, dt, dev))
    CollaborativeDecoder(vae, [var], []).state([1], seed=0)
    assert seen == [token_offsets(vae.patch_nums)[-2]]


def test_generate_outputs(pair):
    vae, var = pair
    img, tokens = var_generate(var, vae, [0, 1, 2, 9], seed=0, return_tokens=True)
    assert img.shape == (4, 3, 8, 8) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1
    assert [t.shape for t in tokens] == [(4, p, p) for p in (1, 2, 3, 4)]
    again = var_generate(var, vae, [0, 1, 2, 9], seed=0)
    assert torch.equal(img, again)
    assert not torch.equal(img, var_generate(var, vae, [0, 1, 2, 9], seed=1))


def test_generator_argument_equals_seed(pair):
    vae, var = pair
    g = torch.Generator().manual_seed(11)
    assert torch.equal(var_generate(var, vae, [3, 4], generator=g), var_generate(var, vae, [3, 4], seed=11))


def test_random_labels_drawn_from_the_stream(pair):
    vae, var = pair
    state = CollaborativeDecoder(vae, [var], []).state(None, batch_size=5, seed=2)
    assert state.labels.shape == (5,) and 0 <= state.labels.min() and state.labels.max() < 10
    assert torch.equal(state.labels, CollaborativeDecoder(vae, [var], []).state(None, batch_size=5, seed=2).labels)
