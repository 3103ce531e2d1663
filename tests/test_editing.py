"""Zero-shot editing: outside the mask, every scale keeps the source image's own tokens."""
import pytest
import torch

from code import box_mask, inpaint, make_edit, token_masks, var_generate
from tiny import tiny_var_like
from utils.images import box_to_mask


def source_image(batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 8, 8, generator=g) * 2 - 1


def test_a_token_is_generated_if_any_pixel_under_it_is_masked():
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 0, 2] = True  # row 0, column 2: on the border of the first two of three columns (8 / 3 overlaps)
    masks = token_masks(mask, (1, 2, 3, 4))
    assert [m.shape for m in masks] == [(1, 1), (1, 4), (1, 9), (1, 16)]
    assert masks[0].tolist() == [[True]]
    assert masks[1].tolist() == [[True, False, False, False]]
    assert masks[2].tolist() == [[True, True] + [False] * 7]
    assert masks[3][0].nonzero().flatten().tolist() == [1]
    assert not any(m.any() for m in token_masks(torch.zeros(2, 8, 8, dtype=torch.bool), (1, 2, 3, 4)))


def test_box_mask_is_x_then_y():
    mask = box_mask(8, (1, 2, 4, 7))  # x0, y0, x1, y1: columns 1..3, rows 2..6
    rows, cols = mask[0].nonzero().unbind(1)
    assert set(rows.tolist()) == {2, 3, 4, 5, 6} and set(cols.tolist()) == {1, 2, 3} and int(mask.sum()) == 15
    assert torch.equal(box_to_mask((1, 2, 4, 7), (8, 8), 8), mask)  # the CLI's --mask x0,y0,x1,y1
    wide = box_to_mask((8, 0, 16, 8), (16, 8), 8)  # the right half of a 16x8 image; the centre crop keeps 4..11
    assert wide[0, :, 4:].all() and not wide[0, :, :4].any()


@pytest.mark.parametrize("chain", ["var", "code"])
@pytest.mark.parametrize("box, outpaint", [((0, 0, 4, 4), False), ((2, 2, 6, 6), True), ((5, 0, 8, 8), False)])
def test_tokens_outside_the_mask_are_the_source_tokens(pair, chain, box, outpaint):
    vae, var = pair
    models, steps = ([var], []) if chain == "var" else ([var, tiny_var_like(vae, 1, seed=8)], 2)
    image = source_image()
    mask = box_mask(8, box)
    mask = ~mask if outpaint else mask
    source = vae.img_to_tokens(image)
    images, tokens = inpaint(vae, models, steps, image, mask, [1, 4, 9], seed=5, return_tokens=True)
    assert images.shape == (3, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    changed = 0
    for k, (t, src, m) in enumerate(zip(tokens, source, token_masks(mask, vae.patch_nums))):
        keep = ~m.expand(3, -1)
        assert torch.equal(t.flatten(1)[keep], src.expand(3, -1)[keep]), f"scale {k}"
        changed += int((t.flatten(1)[~keep] != src.expand(3, -1)[~keep]).sum())
    assert changed > 0  # inside the mask the models did generate


def test_empty_mask_reconstructs_and_full_mask_is_plain_generation(pair):
    vae, var = pair
    image = source_image(2, seed=1)
    none = torch.zeros(2, 8, 8, dtype=torch.bool)
    out, tokens = inpaint(vae, [var], [], image, none, [0, 3], seed=2, return_tokens=True)
    assert all(torch.equal(t.flatten(1), s) for t, s in zip(tokens, vae.img_to_tokens(image)))
    assert torch.allclose(out, vae.tokens_to_img(vae.img_to_tokens(image)).add(1).mul(0.5), atol=1e-5)
    full = inpaint(vae, [var], [], image, ~none, [0, 3], seed=2)
    assert torch.equal(full, var_generate(var, vae, [0, 3], seed=2))


def test_one_source_serves_several_labels_and_shapes_are_checked(pair):
    vae, var = pair
    assert inpaint(vae, [var], [], source_image(2), box_mask(8, (0, 0, 4, 4)), 3, seed=1).shape == (2, 3, 8, 8)
    edit = make_edit(vae, source_image(), box_mask(8, (0, 0, 8, 4)))
    assert [t.shape for t in edit.tokens] == [(1, 1), (1, 4), (1, 9), (1, 16)]
    with pytest.raises(ValueError, match=r"image must be \(B, 3, 8, 8\)"):
        make_edit(vae, torch.zeros(1, 3, 16, 16), box_mask(8, (0, 0, 1, 1)))
    with pytest.raises(ValueError, match=r"mask must be \(B, 8, 8\)"):
        make_edit(vae, source_image(), torch.zeros(8, 8, dtype=torch.bool))
