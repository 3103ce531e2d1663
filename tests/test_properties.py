"""Properties over whole input spaces: the sampler's filters, the token pyramid, editing masks, the data order."""
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from code.editing import box_mask, token_masks
from code.loop import cache_length
from code.sampling import SamplingConfig, cfg_mix, filter_top_k_top_p_, filtered_probs
from models.scales import block_causal_bias, check_patch_nums, scale_ids, token_offsets
from training.data import DataError
from training.optim import LRSchedule
from training.sampler import ShardedBatchSampler

# derandomized: the same examples on every run, so that a failure (or a mutant's survival) reproduces
settings.register_profile("fast", max_examples=40, deadline=None, derandomize=True, database=None)
settings.load_profile("fast")

patch_nums_st = st.lists(st.integers(1, 7), min_size=1, max_size=5, unique=True).map(sorted).map(tuple)
# small integer logits: ties are common, and every sum is exact in float64
logits_st = st.lists(st.integers(-6, 6), min_size=1, max_size=12).map(
    lambda v: torch.tensor([[v]], dtype=torch.float64))
distinct_logits_st = st.lists(st.integers(-6, 6), min_size=2, max_size=12, unique=True).map(
    lambda v: torch.tensor([[v]], dtype=torch.float64))  # a temperature shows in the ratios of distinct logits


# ---- token pyramid ------------------------------------------------------------------------------------
@given(patch_nums_st)
def test_offsets_and_scale_ids_tile_the_sequence(patch_nums):
    offsets, ids = token_offsets(patch_nums), scale_ids(patch_nums)
    assert offsets[0] == 0 and len(offsets) == len(patch_nums) + 1 and len(ids) == offsets[-1]
    for k, p in enumerate(patch_nums):
        assert offsets[k + 1] - offsets[k] == p * p
        assert (ids[offsets[k]: offsets[k + 1]] == k).all()


@given(patch_nums_st)
def test_a_token_sees_exactly_its_own_and_earlier_scales(patch_nums):
    ids = scale_ids(patch_nums).tolist()
    bias = block_causal_bias(patch_nums)
    assert bias.shape == (1, 1, len(ids), len(ids))
    allowed = torch.tensor([[ids[j] <= ids[i] for j in range(len(ids))] for i in range(len(ids))])
    assert torch.equal(bias[0, 0] == 0, allowed) and torch.isneginf(bias[0, 0][~allowed]).all()


@given(patch_nums_st, st.data())
def test_a_model_caches_every_scale_it_runs_but_the_last(patch_nums, data):
    offsets = token_offsets(patch_nums)
    start = data.draw(st.integers(0, len(patch_nums) - 1))
    stop = data.draw(st.integers(start + 1, len(patch_nums)))
    assert cache_length(offsets, start, stop) == (offsets[stop - 1] if stop - start > 1 else 0)


@given(st.lists(st.integers(-2, 8), max_size=5))
def test_patch_nums_are_accepted_iff_positive_and_strictly_increasing(patch_nums):
    increasing = all(a < b for a, b in zip(patch_nums, patch_nums[1:]))
    ok = len(patch_nums) > 0 and all(p >= 1 for p in patch_nums) and increasing
    if ok:
        check_patch_nums(tuple(patch_nums))
    else:
        with pytest.raises(ValueError, match="patch_nums"):
            check_patch_nums(tuple(patch_nums))


# ---- the sampler's filters ----------------------------------------------------------------------------
@given(logits_st, st.integers(0, 14))
def test_top_k_keeps_every_logit_at_least_the_kth_largest(logits, k):
    kept = torch.isfinite(filter_top_k_top_p_(logits.clone(), k, 1.0))[0, 0]
    values = logits[0, 0].tolist()
    if k == 0 or k >= len(values):
        assert kept.all()
    else:
        kth = sorted(values, reverse=True)[k - 1]
        assert kept.tolist() == [v >= kth for v in values]


@given(logits_st, st.sampled_from([0.05, 0.3, 0.5, 0.77, 0.9, 0.999]))
def test_top_p_keeps_the_smallest_top_set_holding_p(logits, top_p):
    probs = logits[0, 0].softmax(-1).tolist()
    kept = torch.isfinite(filter_top_k_top_p_(logits.clone(), 0, top_p))[0, 0].tolist()
    # away from exact boundaries, where float rounding decides
    ascending = sorted(probs)
    assume(all(abs(c - (1 - top_p)) > 1e-9 for c in np.cumsum(ascending)))
    removed_mass = sum(p for p, k in zip(probs, kept) if not k)
    assert any(k for p, k in zip(probs, kept) if p == max(probs))  # a most likely token survives
    assert removed_mass <= 1 - top_p + 1e-12  # what is kept holds at least p
    assert all(p >= q for p, k in zip(probs, kept) if k for q, r in zip(probs, kept) if not r)
    smallest_kept = min(p for p, k in zip(probs, kept) if k)
    if sum(kept) > 1:  # removing one more kept token would lose too much
        assert removed_mass + smallest_kept > 1 - top_p


@given(logits_st, st.integers(1, 6), st.sampled_from([0.3, 0.6, 0.95]))
def test_top_p_applies_to_what_top_k_kept(logits, k, top_p):
    both = filter_top_k_top_p_(logits.clone(), k, top_p)
    assert torch.equal(both, filter_top_k_top_p_(filter_top_k_top_p_(logits.clone(), k, 1.0), 0, top_p))


@given(distinct_logits_st, st.integers(0, 6), st.sampled_from([0.4, 1.0]), st.sampled_from([0.5, 1.0, 2.5]))
def test_filtered_probs_are_a_tempered_softmax_over_the_kept_tokens(logits, k, top_p, temperature):
    kept = torch.isfinite(filter_top_k_top_p_(logits.clone(), k, top_p))
    probs = filtered_probs(logits.clone(), k, top_p, temperature)
    assert torch.equal(probs > 0, kept)
    assert probs.sum().item() == pytest.approx(1.0)
    expect = torch.where(kept, logits / temperature, -torch.inf).softmax(-1)
    torch.testing.assert_close(probs, expect)


@given(st.integers(1, 12), st.floats(0, 100))
def test_guidance_rises_linearly_from_nothing_to_cfg(num_scales, cfg):
    s = SamplingConfig(cfg=cfg)
    g = [s.guidance(k, num_scales) for k in range(num_scales)]
    assert g[0] == 0
    if num_scales > 1:
        assert g[-1] == pytest.approx(cfg)
        assert all(b - a == pytest.approx(cfg / (num_scales - 1)) for a, b in zip(g, g[1:]))
    c, u = torch.randn(2, 1, 3, 5, generator=torch.Generator().manual_seed(num_scales))
    torch.testing.assert_close(cfg_mix(torch.cat([c, u]), 0.7), c + 0.7 * (c - u))


@given(st.sampled_from(["cfg", "top_k", "top_p", "temperature"]),
       st.one_of(st.integers(-3, 3),
                 st.sampled_from([-1.0, -0.5, 0.0, 1e-5, 1e-4, 0.5, 1.0, 1.5, 100.0, 100.5, 1e4, 2e4])))
def test_sampling_settings_are_accepted_iff_in_range(name, value):
    ok = {"cfg": 0 <= value <= 100, "top_k": int(value) == value and value >= 0, "top_p": 0 < value <= 1,
          "temperature": 1e-4 <= value <= 1e4}[name]
    s = SamplingConfig(**{name: value})
    if ok:
        s.validate(3)
    else:
        with pytest.raises(ValueError, match=name):
            s.validate(3)


# ---- editing masks ------------------------------------------------------------------------------------
box_st = st.tuples(st.integers(0, 8), st.integers(0, 8), st.integers(0, 8), st.integers(0, 8))


@given(box_st)
def test_box_mask_is_the_half_open_box(box):
    x0, y0, x1, y1 = box
    mask = box_mask(8, box, batch=2)
    expect = torch.tensor([[x0 <= x < x1 and y0 <= y < y1 for x in range(8)] for y in range(8)])
    assert mask.shape == (2, 8, 8) and torch.equal(mask[0], expect) and torch.equal(mask[1], expect)


@given(st.integers(1, 9), st.integers(0, 8), st.integers(0, 8), st.integers(0, 8), st.integers(0, 8))
def test_a_token_is_generated_iff_a_masked_pixel_lies_in_its_area(size, y, x, y2, x2):
    y, x, y2, x2 = y % size, x % size, y2 % size, x2 % size
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[0, y, x] = mask[0, y2, x2] = True
    for p in range(1, size + 1):
        got = token_masks(mask, (p,))[0].view(p, p)
        # adaptive pooling bins: token i covers pixel rows floor(i S / p) .. ceil((i + 1) S / p) - 1
        covers = [[i * size // p <= r < -(-(i + 1) * size // p) for i in range(p)] for r in range(size)]
        expect = torch.tensor([[(covers[y][i] and covers[x][j]) or (covers[y2][i] and covers[x2][j])
                                for j in range(p)] for i in range(p)])
        assert torch.equal(got[...], expect)


# ---- training data order ------------------------------------------------------------------------------
sampler_st = st.tuples(st.integers(1, 40), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
                       st.integers(0, 3), st.integers(0, 20))


@given(sampler_st)
def test_ranks_split_each_global_batch_and_an_epoch_reads_each_image_once(case):
    n, bs, accum, world, seed, step = case
    G = bs * accum * world
    if n < G:
        with pytest.raises(DataError, match="fewer than one global batch"):
            ShardedBatchSampler(n, bs, accum, 0, world, seed)
        return
    samplers = [ShardedBatchSampler(n, bs, accum, r, world, seed) for r in range(world)]
    spe = n // G
    assert samplers[0].steps_per_epoch == spe
    epoch = step // spe
    perm = samplers[0].permutation(epoch)
    assert sorted(perm.tolist()) == list(range(n))
    per_step = []
    for s in range(epoch * spe, (epoch + 1) * spe):
        parts = [sp.step_batches(s, perm) for sp in samplers]
        assert all(len(p) == accum and all(len(mb) == bs for mb in p) for p in parts)
        keys = [k for p in parts for mb in p for k in mb]
        assert {e for _, e in keys} == {epoch}
        per_step.append([i for i, _ in keys])
    flat = [i for s in per_step for i in s]
    assert len(set(flat)) == len(flat) == spe * G  # disjoint ranks, no image twice in an epoch
    first = (step - epoch * spe) * G
    assert sorted(per_step[step - epoch * spe]) == sorted(perm[first: first + G].tolist())
    pos = samplers[0].position(step)
    assert (pos.epoch, pos.step_in_epoch, pos.epoch * spe + pos.step_in_epoch) == (epoch, step % spe, step)


@given(sampler_st)
def test_a_resumed_stream_continues_the_uninterrupted_one(case):
    n, bs, accum, world, seed, step = case
    assume(n >= bs * accum * world)
    rank = seed % world
    full, resumed = (iter(ShardedBatchSampler(n, bs, accum, rank, world, seed, start_step=s)) for s in (0, step))
    whole = [next(full) for _ in range((step + 2) * accum)]
    assert [next(resumed) for _ in range(2 * accum)] == whole[step * accum:]


def test_epochs_and_seeds_reorder_the_data():
    s = ShardedBatchSampler(64, 4, 1, 0, 1, seed=0)
    orders = [tuple(s.permutation(e)) for e in range(3)]
    orders.append(tuple(ShardedBatchSampler(64, 4, 1, 0, 1, seed=1).permutation(0)))
    assert len(set(orders)) == 4
    assert sorted(i for i, _ in next(iter(ShardedBatchSampler(8, 8, 1, 0, 1)))) == list(range(8))  # default seed


# ---- learning-rate schedule ---------------------------------------------------------------------------
@given(st.integers(2, 60), st.integers(0, 70), st.sampled_from(["linear", "cosine"]), st.sampled_from([0.0, 0.01, 0.3]))
def test_lr_warms_up_to_the_peak_then_decays_to_the_floor(total, warmup, kind, min_ratio):
    sched = LRSchedule(peak=2.0, total_steps=total, warmup_steps=warmup, kind=kind, min_ratio=min_ratio)
    lrs = [sched(s) for s in range(total)]
    w = min(warmup, total - 1)
    if w > 0:  # a straight line from VAR's 0.5% of the peak at step 0 that reaches the peak at step w
        assert lrs[0] == pytest.approx(2.0 * 0.005)
        assert all(b - a == pytest.approx((2.0 - lrs[0]) / w) for a, b in zip(lrs[:w + 1], lrs[1:w + 1]))
    assert lrs[w] == pytest.approx(2.0) and max(lrs) == pytest.approx(2.0)
    assert all(a >= b for a, b in zip(lrs[w:], lrs[w + 1:]))
    if w < total - 1:
        assert lrs[-1] == pytest.approx(2.0 * min_ratio)
    assert min(lrs) >= 2.0 * min(min_ratio, 0.005) - 1e-12 and math.isfinite(sum(lrs))
