"""What the decoding steps accept and report, at the edges the sampling tests do not reach."""
import math
from types import SimpleNamespace

import pytest
import torch

from code import CollaborativeDecoder, FastPath, FastPathMismatch, SamplingConfig
from code.decoder import chain_stops
from code.editing import box_mask, make_edit
from code.fast_check import check_fast_path, rms_difference
from code.loop import MAX_SEED, make_generator, precision, resolve_labels
from code.sampling import fill_noise_, sample_tokens
from tiny import TINY_VAE, TINY_VAR, tiny_var_like
from models import build_vae_var
from test_fast_check import PLANTS, decoder, run_batches  # noqa: F401


@pytest.mark.parametrize("value,ok", [(1.0005, True), (-1.0005, True), (1.01, False), (-1.01, False)])
def test_an_edit_source_may_overshoot_one_by_rounding_but_not_more(pair, value, ok):
    vae, _ = pair
    image = torch.zeros(1, 3, 8, 8)
    image[0, 0, 0, 0] = value
    if ok:
        make_edit(vae, image, box_mask(8, (0, 0, 4, 4)))
    else:
        with pytest.raises(ValueError, match=r"image must be in \[-1, 1\]"):
            make_edit(vae, image, box_mask(8, (0, 0, 4, 4)))


def test_pixel_check_is_the_worst_image_rms():
    a = torch.zeros(2, 3, 2, 2)
    b = a.clone()
    b[0] += 3.0  # rms 3 over every pixel of image 0
    b[1, 0, 0, 0] = 4.0 * 12 ** 0.5  # rms 4 from one pixel of image 1
    assert rms_difference(a, b) == pytest.approx(4.0)
    assert rms_difference(b, b) == 0.0


@pytest.mark.parametrize("bug,several", [("wrong decoder", False), ("stale inputs", True)])
def test_a_mismatch_names_the_first_failure_and_counts_the_others(decoder, monkeypatch, bug, several):
    plant, _, kw = PLANTS[bug]
    plant(monkeypatch)
    path = FastPath(decoder)
    with pytest.raises(FastPathMismatch) as e:
        run_batches(decoder, path, **kw)
    failures, message = path.reports[0].failures(), str(e.value)
    assert (len(failures) > 1) == several and str(failures[0]) in message
    assert (f"(and {len(failures) - 1} more)" in message) == several and "(and 0 more)" not in message


@pytest.mark.parametrize("batch", [2, 300])  # 300: past the small integers Python keeps one object of
def test_one_generator_per_image_exactly(batch):
    logits = torch.zeros(batch, 1, 3)
    gens = [torch.Generator().manual_seed(i) for i in range(batch + 1)]
    assert sample_tokens(logits.clone(), 0, 1.0, generator=gens[:batch]).shape == (batch, 1)
    assert fill_noise_(torch.empty(batch, 1, 3), gens[:batch]).min() > 0
    for wrong in (gens[:batch - 1], gens):
        with pytest.raises(ValueError, match=f"got {len(wrong)} generators for a batch of {batch}"):
            sample_tokens(logits.clone(), 0, 1.0, generator=wrong)
        with pytest.raises(ValueError, match=f"got {len(wrong)} generators for a batch of {batch}"):
            fill_noise_(torch.empty(batch, 1, 3), wrong)


def test_reduced_weights_run_under_their_autocast_and_two_reduced_dtypes_are_refused():
    def model(dtype):
        return SimpleNamespace(head=SimpleNamespace(weight=torch.zeros(1, dtype=dtype)))
    cpu = torch.device("cpu")
    assert not isinstance(precision([model(torch.float32)], cpu), torch.autocast)
    ctx = precision([model(torch.bfloat16), model(torch.float32)], cpu)
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="mix"):
        precision([model(torch.bfloat16), model(torch.float16)], cpu)


def test_top_p_one_and_the_largest_seed_are_accepted():
    SamplingConfig(top_p=1.0).validate(4)
    SamplingConfig(top_p=[0.5, 1.0, 1.0, 0.9]).validate(4)
    assert make_generator(MAX_SEED, None, "cpu").initial_seed() == MAX_SEED
    with pytest.raises(ValueError, match="seed must be an integer"):
        make_generator(MAX_SEED + 1, None, "cpu")


def test_the_default_temperature_leaves_the_distribution_alone():
    """p = softmax(0, log 3) = (1/4, 3/4); a temperature of 2 would give token 1 only 63%."""
    logits = torch.tensor([0.0, math.log(3.0)]).expand(1, 4000, 2).clone()
    drawn = sample_tokens(logits, 0, 1.0, generator=torch.Generator().manual_seed(0))
    assert drawn.float().mean().item() == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize("labels", [torch.tensor([1.0, 2.0]), [1.0, 2.0], torch.tensor([True, False])])
def test_labels_that_are_not_integers_are_refused(labels):
    with pytest.raises(ValueError, match="labels must be integer class ids"):
        resolve_labels(labels, None, 10, "cpu", None)


@pytest.mark.parametrize("models", [1, 2, 3])
def test_the_boundary_message_counts_one_per_model_but_the_last(models):
    with pytest.raises(ValueError, match=f"draft_steps needs {models - 1} boundaries for {models} models"):
        chain_stops(list(range(models)), models, 4)


def test_pixels_in_0_255_get_the_hint_and_a_small_overshoot_does_not(pair):
    vae, _ = pair
    for value, hint in ((255.0, True), (3.0, True), (1.5, False)):
        with pytest.raises(ValueError, match=r"image must be in \[-1, 1\]") as e:
            make_edit(vae, torch.full((1, 3, 8, 8), value), box_mask(8, (0, 0, 4, 4)))
        assert ("x / 127.5 - 1" in str(e.value)) == hint


def test_a_model_left_no_scales_draws_no_random_numbers(pair):
    """A refiner after draft_steps = K runs nothing: the chain leaves the generator where the drafter alone does,
    with more_smooth too (whose refiner would otherwise replay the prefix's draws)."""
    vae, var = pair
    K = vae.quantize.num_scales
    ends = []
    for decoder in (CollaborativeDecoder(vae, [var]), CollaborativeDecoder(vae, [var, var], [K])):
        g = torch.Generator().manual_seed(0)
        decoder.state([1, 2], generator=g, more_smooth=True)
        ends.append(torch.rand(3, generator=g))
    assert torch.equal(*ends)


def test_the_check_marks_only_first_passes_of_refiners_as_prefills_past_small_integers():
    """Offsets past 256 (patch sizes 1, 16, 17, 18): equal positions are not one object there."""
    torch.manual_seed(0)
    vae, drafter = build_vae_var(depth=1, vae_overrides={**TINY_VAE, "patch_nums": (1, 16, 17, 18)}, **TINY_VAR)
    decoder = CollaborativeDecoder(vae.eval(), [drafter.eval(), tiny_var_like(vae, depth=1, seed=5)], [1])
    path = FastPath(decoder, check=False)
    sampling = SamplingConfig(top_k=0, top_p=1.0)
    state = decoder.state([1], seed=0, fast=path, sampling=sampling)
    report = check_fast_path(decoder, path, state, sampling)
    assert [(p.model, p.scale, p.prefill) for p in report.passes] == [(0, 0, False), (1, 1, True), (1, 2, False),
                                                                      (1, 3, False)]
