import torch

from tiny import TINY_VAE, randomize_
from models import build_vae
from code import CollaborativeDecoder


def test_tokens_decode_like_fhat(pair64):
    vae, _ = pair64
    img = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1
    tokens = vae.img_to_tokens(img)
    assert [t.shape for t in tokens] == [(2, p * p) for p in TINY_VAE["patch_nums"]]
    assert all(t.dtype == torch.long and 0 <= t.min() and t.max() < 64 for t in tokens)
    f_hat = vae.img_to_fhat(img)
    torch.testing.assert_close(vae.quantize.tokens_to_fhat(tokens), f_hat, rtol=1e-12, atol=1e-12)
    out = vae.tokens_to_img(tokens)
    torch.testing.assert_close(out, vae.fhat_to_img(f_hat), rtol=1e-12, atol=1e-12)
    assert out.shape == img.shape and out.min() >= -1 and out.max() <= 1


def test_residual_quantisation_reduces_error(pair64):
    vae, _ = pair64
    f = vae.encode_latent(torch.rand(3, 3, 8, 8, dtype=torch.float64) * 2 - 1)
    errs = [(f - fh).square().mean().item() for fh in vae.quantize.f_to_tokens(f, return_fhat=True)]
    assert errs[-1] < errs[0]


def test_teacher_forcing_inputs_equal_generation_inputs(pair64):
    vae, var = pair64
    state = CollaborativeDecoder(vae, [var], []).state([1, 2, 3], seed=0)
    teacher = vae.tokens_to_var_input(state.tokens)
    assert teacher.shape == (3, 4 + 9 + 16, 8)  # inputs of scales 1..3
    torch.testing.assert_close(teacher, torch.cat(state.inputs, 1), rtol=0, atol=0)
    torch.testing.assert_close(vae.quantize.tokens_to_fhat(state.tokens), state.f_hat, rtol=1e-12, atol=1e-12)


def test_phi_schedule_of_published_scales():
    vae = build_vae("meta")
    q = vae.quantize
    chosen = [list(q.quant_resi.qresi_ls).index(q.quant_resi.for_scale(k, 10)) for k in range(10)]
    # ticks = linspace(1/12, 11/12, 4), scale k sits at k/9; k = 2 and k = 7 are exact ties that the
    # published float64 argmin breaks this way
    assert chosen == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]


def test_full_ten_scale_pyramid_round_trip():
    torch.manual_seed(0)
    vae = randomize_(build_vae(ch=32, ch_mult=(1, 1, 1, 1, 1), vocab_size=32, z_channels=4), 0, 0.1).double().eval()
    img = torch.rand(1, 3, 256, 256, dtype=torch.float64) * 2 - 1
    tokens = vae.img_to_tokens(img)
    assert [t.shape[1] for t in tokens] == [p * p for p in (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)]
    torch.testing.assert_close(vae.quantize.tokens_to_fhat(tokens), vae.img_to_fhat(img), rtol=1e-12, atol=1e-12)
