"""Multi-scale residual quantiser: image latents <-> the K token maps, and the next-scale inputs of VAR."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Phi(nn.Conv2d):
    """phi(h) = (1 - r) * h + r * conv(h): the residual refinement applied to every upsampled token map."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, 3, 1, 1)
        self.ratio = abs(ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul_(self.ratio)


class PhiShared(nn.Module):
    """A few phi convs shared across scales; scale k uses the one whose tick is nearest to k / (K - 1)."""

    def __init__(self, channels: int, ratio: float, count: int):
        super().__init__()
        self.qresi_ls = nn.ModuleList([Phi(channels, ratio) for _ in range(count)])
        self.ticks = np.linspace(1 / 3 / count, 1 - 1 / 3 / count, count) if count == 4 else \
            np.linspace(1 / 2 / count, 1 - 1 / 2 / count, count)

    def for_scale(self, k: int, num_scales: int) -> Phi:
        at = k / (num_scales - 1) if num_scales > 1 else 0.0
        return self.qresi_ls[int(np.argmin(np.abs(self.ticks - at)))]


class QuantOutput(NamedTuple):
    f_hat: torch.Tensor  # (B, Cvae, H, W): the value of f_to_tokens' f_hat, the gradient of f (straight-through)
    loss: torch.Tensor  # scalar: codebook + beta * commitment, averaged over the scales
    usage: torch.Tensor  # (K,) fraction of the vocabulary this batch used at each scale
    tokens: list[torch.Tensor]  # K token maps (B, p*p), as f_to_tokens returns them


class MultiScaleQuantizer(nn.Module):
    def __init__(self, vocab_size: int, channels: int, patch_nums: tuple[int, ...],
                 quant_resi: float = 0.5, share_quant_resi: int = 4, beta: float = 0.25):
        super().__init__()
        self.vocab_size, self.Cvae, self.patch_nums, self.beta = vocab_size, channels, tuple(patch_nums), beta
        self.embedding = nn.Embedding(vocab_size, channels)
        self.quant_resi = PhiShared(channels, quant_resi, share_quant_resi)
        # per-scale code usage (EMA), updated in training and reported by train_vqvae.py; inference ignores it
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def phi(self, k: int, h_BChw: torch.Tensor) -> torch.Tensor:
        return self.quant_resi.for_scale(k, self.num_scales)(h_BChw)

    def upsample(self, k: int, h_BChw: torch.Tensor) -> torch.Tensor:
        """Token-map embedding of scale k -> full latent size (identity on the last scale)."""
        H = self.patch_nums[-1]
        return h_BChw if k == self.num_scales - 1 else F.interpolate(h_BChw, size=(H, H), mode="bicubic")

    def lookup(self, idx_Bl: torch.Tensor, k: int) -> torch.Tensor:
        """(B, p*p) token ids of scale k -> (B, Cvae, p, p) code vectors."""
        return self.code_map(self.embedding(idx_Bl), k)

    def code_map(self, h_BlC: torch.Tensor, k: int) -> torch.Tensor:
        """(B, p*p, Cvae) code vectors of scale k -> (B, Cvae, p, p)."""
        p = self.patch_nums[k]
        return h_BlC.transpose(1, 2).reshape(h_BlC.shape[0], self.Cvae, p, p)

    def nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        w = self.embedding.weight.data
        d = z_NC.square().sum(1, keepdim=True) + w.square().sum(1)
        return d.addmm_(z_NC, w.T, alpha=-2, beta=1).argmin(1)

    def embed_scale(self, k: int, idx_Bl: torch.Tensor) -> torch.Tensor:
        """Token map k -> its term of f_hat, phi(upsample(code vectors)), as (B, Cvae, H, W)."""
        return self.phi(k, self.upsample(k, self.lookup(idx_Bl, k)))

    def quantize_scale(self, k: int, f_rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of residual quantisation: the nearest codes of f_rest at scale k, and their f_hat term."""
        B, C, H, W = f_rest.shape
        if (H, W) != (self.patch_nums[-1],) * 2:
            raise ValueError(f"latent is {H}x{W} but the last patch size is {self.patch_nums[-1]}")
        p = self.patch_nums[k]
        z = f_rest if k == self.num_scales - 1 else F.interpolate(f_rest, size=(p, p), mode="area")
        idx = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, C)).view(B, p * p)
        return idx, self.embed_scale(k, idx)

    @torch.no_grad()
    def f_to_tokens(self, f_BChw: torch.Tensor, return_fhat: bool = False) -> list[torch.Tensor]:
        """Residual quantisation of a latent: K token maps (B, p*p), or the running f_hat after each scale."""
        f_rest, f_hat, out = f_BChw.detach().clone(), torch.zeros_like(f_BChw), []
        for k in range(self.num_scales):
            idx, h = self.quantize_scale(k, f_rest)
            f_hat.add_(h)
            f_rest.sub_(h)
            out.append(f_hat.clone() if return_fhat else idx)
        return out

    def forward(self, f_BChw: torch.Tensor) -> QuantOutput:
        """Training: the residual quantisation of f_to_tokens, with gradients for the encoder, codebook and phi.

        At scale k the loss compares the running sum f_hat_k with f: ||f_hat_k - sg(f)||^2 trains the codebook
        and phi, beta * ||sg(f_hat_k) - f||^2 pulls the encoder towards its codes (VAR's tokenizer objective).
        The returned f_hat equals f_to_tokens' bit for bit; its gradient flows to f unchanged.
        """
        f = f_BChw
        f_rest, f_hat = f.detach().clone(), torch.zeros_like(f)
        loss, usage, tokens = f.new_zeros(()), f.new_zeros(self.num_scales), []
        for k in range(self.num_scales):
            idx, h = self.quantize_scale(k, f_rest)
            f_hat = f_hat + h
            f_rest.sub_(h.detach())
            loss = loss + F.mse_loss(f_hat, f.detach()) + self.beta * F.mse_loss(f_hat.detach(), f)
            hits = torch.bincount(idx.flatten(), minlength=self.vocab_size)
            usage[k] = (hits > 0).float().mean()
            if self.training:
                self.ema_vocab_hit_SV[k].mul_(0.99).add_(hits.float(), alpha=0.01)
            tokens.append(idx)
        # value f_hat exactly (f - sg(f) is exactly 0), gradient of f: the straight-through estimator
        return QuantOutput(f_hat.detach() + (f - f.detach()), loss / self.num_scales, usage, tokens)

    def tokens_to_fhat(self, idx: list[torch.Tensor]) -> torch.Tensor:
        """Sum of phi(upsample(embed)) over all K token maps: the latent the decoder reads."""
        f_hat = self.zeros_fhat(idx[0].shape[0])
        for k, idx_Bl in enumerate(idx):
            f_hat.add_(self.embed_scale(k, idx_Bl))
        return f_hat

    def zeros_fhat(self, batch: int) -> torch.Tensor:
        w, H = self.embedding.weight, self.patch_nums[-1]  # f_hat accumulates in at least float32
        return torch.zeros(batch, self.Cvae, H, H, device=w.device, dtype=torch.promote_types(w.dtype, torch.float32))

    def next_input(self, k: int, f_hat: torch.Tensor, idx_Bl: torch.Tensor,
                   codes_BlC: torch.Tensor | None = None) -> torch.Tensor | None:
        """Add token map k to f_hat (in place), or the code vectors `codes_BlC` (B, p*p, Cvae) given in place of
        its codebook entries; return VAR's input for scale k+1 as (B, p*p, Cvae), or None."""
        h = self.lookup(idx_Bl, k) if codes_BlC is None else self.code_map(codes_BlC, k)
        f_hat.add_(self.phi(k, self.upsample(k, h)))
        if k == self.num_scales - 1:
            return None
        p = self.patch_nums[k + 1]
        return F.interpolate(f_hat, size=(p, p), mode="area").flatten(2).transpose(1, 2)

    def tokens_to_var_input(self, idx: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing inputs from ground-truth token maps: (B, L - p_0^2, Cvae), float32."""
        B, f_hat = idx[0].shape[0], self.zeros_fhat(idx[0].shape[0])
        inputs = [self.next_input(k, f_hat, idx[k]) for k in range(self.num_scales - 1)]
        return torch.cat(inputs, 1) if inputs else f_hat.new_zeros(B, 0, self.Cvae)
