import pytest
import torch

from code import CollaborativeDecoder, TokenEdit, collaborative_generate, var_generate
from code.sampling import SamplingConfig, cfg_mix, filter_top_k_top_p_, sample_tokens


def test_top_k_keeps_ties():
    logits = torch.tensor([[[3.0, 1.0, 2.0, 2.0, 0.0]]])
    out = filter_top_k_top_p_(logits.clone(), top_k=2, top_p=1.0)
    assert torch.isinf(out).tolist() == [[[False, True, False, False, True]]]  # 2.0 tied at rank 2 and 3


def test_top_p_matches_a_direct_nucleus():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 50)
    out = filter_top_k_top_p_(logits.clone(), top_k=0, top_p=0.8)
    probs = logits.softmax(-1)
    for row, kept in zip(probs.view(-1, 50), ~torch.isinf(out).view(-1, 50)):
        order = row.argsort()  # ascending
        cum = row[order].cumsum(0)
        expect = cum > 1 - 0.8
        expect[-1] = True
        assert torch.equal(kept[order], expect)


def test_top_p_always_keeps_the_best_token():
    logits = torch.tensor([[[10.0, 0.0, 0.0]]])
    out = filter_top_k_top_p_(logits.clone(), top_k=0, top_p=0.01)
    assert torch.isfinite(out).tolist() == [[[True, False, False]]]


def test_temperature_applies_after_filtering():
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0]]]).repeat(1, 4000, 1)
    g = torch.Generator().manual_seed(0)
    idx = sample_tokens(logits.clone(), top_k=2, top_p=1.0, temperature=100.0, generator=g)
    assert set(idx.unique().tolist()) == {0, 1}  # a hot temperature cannot revive filtered tokens
    frac = (idx == 1).float().mean().item()
    assert 0.45 < frac < 0.55


def test_temperature_does_not_move_the_nucleus():
    """top_p keeps {0, 1} of these logits; a temperature of 3 applied before the filter would keep {0, 1, 2}."""
    logits = torch.tensor([[[2.0, 1.0, 0.0, -1.0]]]).repeat(1, 4000, 1)
    g = torch.Generator().manual_seed(0)
    idx = sample_tokens(logits.clone(), top_k=0, top_p=0.7, temperature=3.0, generator=g)
    assert set(idx.unique().tolist()) == {0, 1}
    expected = 1 / (1 + torch.tensor(1 / 3).exp().item())  # p(1) = e^(1/3) / (e^(2/3) + e^(1/3))
    assert abs((idx == 1).float().mean().item() - expected) < 0.03


def test_sampler_draws_one_multinomial_like_published():
    logits = torch.randn(2, 3, 16)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ours = sample_tokens(logits.clone(), 4, 0.9, 1.3, generator=g1)
    ref = filter_top_k_top_p_(logits.clone(), 4, 0.9).div(1.3).softmax(-1).view(-1, 16)
    assert torch.equal(ours, torch.multinomial(ref, 1, replacement=True, generator=g2).view(2, 3))


def test_greedy_is_argmax_and_draws_nothing():
    logits = torch.randn(2, 3, 16)
    g = torch.Generator().manual_seed(1)
    before = g.get_state()
    assert torch.equal(sample_tokens(logits.clone(), 4, 0.9, generator=g, greedy=True), logits.argmax(-1))
    assert torch.equal(g.get_state(), before)


def test_cfg_mix_and_schedule():
    cond, uncond = torch.full((1, 2, 3), 2.0), torch.full((1, 2, 3), 1.0)
    assert torch.equal(cfg_mix(torch.cat((cond, uncond)), 0.5), torch.full((1, 2, 3), 2.5))
    s = SamplingConfig(cfg=3.0)
    assert [s.guidance(k, 4) for k in range(4)] == [0.0, 1.0, 2.0, 3.0]


def test_per_scale_lists():
    s = SamplingConfig(top_k=[600] * 4, top_p=0.95, temperature=[1.1, 1.1, 1.0, 1.0])
    s.validate(4)
    assert s.at(0, 4) == (600, 0.95, 1.1) and s.at(3, 4) == (600, 0.95, 1.0)


@pytest.mark.parametrize("kwargs,name", [
    (dict(cfg=-1.0), "cfg"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-3), "top_k"),
    (dict(top_k=[1, 2]), "top_k"), (dict(temperature=0.0), "temperature"), (dict(top_p=[0.9] * 3), "top_p"),
])
def test_bad_sampling_arguments_name_the_argument(pair, kwargs, name):
    vae, var = pair
    with pytest.raises(ValueError, match=name):
        var_generate(var, vae, [1], **kwargs)


@pytest.mark.parametrize("labels", [[10], [-1], [0, 1000]])
def test_labels_out_of_range(pair, labels):
    vae, var = pair
    with pytest.raises(ValueError, match="labels"):
        var_generate(var, vae, labels)


def test_per_image_generators_make_images_batch_independent(pair):
    vae, var = pair

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]
    big, tb = var_generate(var, vae, [1, 2, 3, 4, 5], generator=gens([10, 11, 12, 13, 14]), return_tokens=True)
    small, ts = var_generate(var, vae, [3, 4], generator=gens([12, 13]), return_tokens=True)
    assert all(torch.equal(a[2:4], b) for a, b in zip(tb, ts))
    torch.testing.assert_close(big[2:4], small)
    alone = var_generate(var, vae, [3], seed=12)  # one image per call, as the published sampler
    torch.testing.assert_close(big[2:3], alone)


def test_random_labels_need_a_single_generator(pair):
    vae, var = pair
    with pytest.raises(ValueError, match="pass the labels"):
        var_generate(var, vae, None, batch_size=2, generator=[torch.Generator(), torch.Generator()])


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_more_smooth_keeps_images_batch_independent_in_a_chain(pair):
    """Each image's Gumbel draws, and the refiner's restart of its stream, come from its own generator."""
    vae, var = pair
    kw = dict(draft_steps=2, more_smooth=True, top_k=5)
    big = collaborative_generate(var, var, vae, [1, 2, 3, 4, 5], generator=gens([10, 11, 12, 13, 14]), **kw)
    small = collaborative_generate(var, var, vae, [3, 4], generator=gens([12, 13]), **kw)
    torch.testing.assert_close(big[2:4], small)
    torch.testing.assert_close(big[2:3], collaborative_generate(var, var, vae, [3], seed=12, **kw))
    plain = collaborative_generate(var, var, vae, [3], seed=12, draft_steps=2, top_k=5)
    assert (plain - big[2:3]).abs().max() > 1e-3  # the smoothing changes the picture


def test_more_smooth_keeps_edited_tokens_exact(pair):
    """Outside an edit's mask the next-scale input is the kept token's codebook entry, not a smoothed one."""
    vae, var = pair
    _, tokens = var_generate(var, vae, [1, 2], seed=3, return_tokens=True)
    tokens = [t.flatten(1) for t in tokens]
    edit = TokenEdit(tokens, [torch.zeros_like(t, dtype=torch.bool) for t in tokens])
    state = CollaborativeDecoder(vae, [var]).state([1, 2], seed=0, more_smooth=True, edit=edit)
    torch.testing.assert_close(state.f_hat, vae.quantize.tokens_to_fhat(tokens))


@pytest.mark.parametrize("kwargs, message", [
    (dict(fast=True), "eager path only"), (dict(greedy=True), "choose one"), (dict(more_smooth=1), "True or False"),
])
def test_more_smooth_refused_where_it_does_not_apply(pair, kwargs, message):
    vae, var = pair
    with pytest.raises(ValueError, match=message):
        var_generate(var, vae, [1], seed=0, **{"more_smooth": True, **kwargs})
