"""What the decoding steps accept and report, at the edges the sampling tests do not reach."""
from types import SimpleNamespace

import pytest
import torch

from code import FastPath, FastPathMismatch
from code.editing import box_mask, make_edit
from code.fast_check import rms_difference
from code.loop import precision
from code.sampling import fill_noise_, sample_tokens
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
