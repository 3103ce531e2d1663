"""Training-time parts of the models that sampling never runs: drop path, the initialisation, the tokenizer loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from tiny import TINY_VAE, TINY_VAR
from models import build_vae, build_var
from models.kv_cache import KVCache
from models.quant import PhiShared
from models.vae_blocks import Decoder
from models.var_blocks import DropPath


def test_drop_path_drops_whole_samples_and_rescales_the_rest():
    torch.manual_seed(0)
    x = torch.randn(200, 3, 5)
    layer = DropPath(0.25).train()
    y = layer(x)
    kept = [bool((y[i] != 0).any()) for i in range(len(x))]
    for i, k in enumerate(kept):
        torch.testing.assert_close(y[i], x[i] / 0.75 if k else torch.zeros_like(x[i]))
    assert 125 < sum(kept) < 175
    assert torch.equal(layer.eval()(x), x) and torch.equal(DropPath(0.0).train()(x), x)


def test_a_fresh_var_has_the_published_initialisation():
    """Weights ~ N(0, 1 / (3 width)); residual outputs / sqrt(2 depth); head x 0.02; AdaLN gammas x 1e-5, rest x 0.5."""
    torch.manual_seed(0)
    depth, width = 3, TINY_VAR["width"]
    var = build_var(depth, vocab_size=64, cvae=8, patch_nums=(1, 2, 3, 4), **TINY_VAR)
    s = math.sqrt(1 / 3 / width)
    block = var.blocks[1]
    ada = block.ada_lin[-1].weight
    expected = {"qkv": (block.attn.mat_qkv.weight, s), "fc1": (block.ffn.fc1.weight, s),
                "proj": (block.attn.proj.weight, s / math.sqrt(2 * depth)),
                "fc2": (block.ffn.fc2.weight, s / math.sqrt(2 * depth)),
                "gammas": (ada[:2 * width], s * 1e-5), "scales and shifts": (ada[2 * width:], s * 0.5),
                "head": (var.head.weight, s * 0.02), "head adaln": (var.head_nm.ada_lin[-1].weight, s * 0.5),
                "class embedding": (var.class_emb.weight, s), "positions": (var.pos_1LC, s)}
    for name, (w, std) in expected.items():
        assert w.std().item() == pytest.approx(std, rel=0.1), name
    assert not var.head.bias.any() and not block.ffn.fc2.bias.any()


def test_tokenizer_loss_is_codebook_plus_beta_commitment_over_the_scales():
    torch.manual_seed(0)
    q = build_vae(**TINY_VAE).quantize
    f = torch.randn(2, TINY_VAE["z_channels"], 4, 4, requires_grad=True)
    out = q(f)
    fhats = q.f_to_tokens(f, return_fhat=True)
    mse = torch.stack([F.mse_loss(h, f.detach()) for h in fhats])
    torch.testing.assert_close(out.loss, (1 + q.beta) * mse.mean())
    out.loss.backward()  # only the commitment term reaches the encoder's output
    torch.testing.assert_close(f.grad, q.beta * sum(2 * (f.detach() - h) / f.numel() for h in fhats) / len(fhats))


def test_drop_path_rates_rise_linearly_from_zero_over_the_blocks():
    var = build_var(4, device="meta", drop_path_rate=0.3, **TINY_VAR)
    assert [b.drop_path.p for b in var.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 6])
def test_shared_phis_split_the_scales_evenly(count):
    """Each of `count` phis serves the scales nearest its tick: equal bins of [0, 1] with ticks at their centres;
    the published count, 4, spaces VAR's ticks evenly from 1/12 to 11/12 instead."""
    ticks = PhiShared(2, 0.5, count).ticks
    expected = [1 / 12 + i * 5 / 18 for i in range(4)] if count == 4 else \
        [(i + 0.5) / count for i in range(count)]
    assert list(ticks) == pytest.approx(expected)


def test_a_cache_over_given_tensors_needs_keys_and_values_alike():
    k = torch.zeros(2, 3, 5, 4)
    cache = KVCache.over(k, torch.ones_like(k))
    assert cache.k is k and cache.length == 5
    for v in (torch.zeros(2, 3, 6, 4), k.double(), torch.zeros(2, 3, 5)):
        with pytest.raises(ValueError, match="must match"):
            KVCache.over(k if v.ndim == 4 else v, v)
    five = torch.zeros(2, 3, 5, 4, 1)  # (B, H, T, c) only, even when keys and values agree
    with pytest.raises(ValueError, match="must match"):
        KVCache.over(five, five.clone())


def test_a_vae_decoder_built_without_a_rate_drops_nothing():
    torch.manual_seed(0)
    decoder = Decoder(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4)
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(decoder.train()(z), decoder.eval()(z))


def test_the_training_quantizer_returns_the_tokens_latent_with_a_straight_through_gradient():
    vae = build_vae(**TINY_VAE)
    torch.manual_seed(0)
    f = torch.randn(2, TINY_VAE["z_channels"], 4, 4, requires_grad=True)
    out = vae.quantize(f)
    assert torch.equal(out.f_hat, vae.quantize.f_to_tokens(f, return_fhat=True)[-1])
    assert torch.equal(out.f_hat, vae.quantize.tokens_to_fhat(out.tokens))
    (out.f_hat * torch.arange(f.numel()).view_as(f)).sum().backward()
    assert torch.equal(f.grad, torch.arange(f.numel()).view_as(f).float())


@pytest.mark.parametrize("size", [3, 5])
def test_a_latent_of_another_size_than_the_last_patch_is_refused(size):
    vae = build_vae(**TINY_VAE)
    with pytest.raises(ValueError, match=f"latent is {size}x{size} but the last patch size is 4"):
        vae.quantize(torch.zeros(1, TINY_VAE["z_channels"], size, size))
    with pytest.raises(ValueError, match="last patch size"):
        vae.quantize.f_to_tokens(torch.zeros(1, TINY_VAE["z_channels"], size, size))
