"""Transformer pieces of VAR: L2-normalised attention, MLP, AdaLN block and head."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kv_cache import KVCache

MAX_SCALE_MUL = torch.tensor(100.0).log().item()  # the published clamp, computed the same way


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)))  # = torch's fp32 log
        self.mat_qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(width)), nn.Parameter(torch.zeros(width))
        self.register_buffer("zero_k_bias", torch.zeros(width))  # in the checkpoints; keys have no bias
        self.proj = nn.Linear(width, width)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, bg: int, ed: int) -> torch.Tensor:
        B, L, C = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(B, L, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, c)
        q = F.normalize(q, dim=-1).mul(self.scale_mul_1H11.clamp_max(MAX_SCALE_MUL).exp())
        k = F.normalize(k, dim=-1)
        if self.kv_cache is not None:
            k, v = self.kv_cache.attend_to(bg, ed, k, v)
        if mask is not None:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class FFN(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - self.p)
        return x * keep.div_(1 - self.p)


class AdaLNBlock(nn.Module):
    """x += attn(LN(x)(1+scale1)+shift1)*gamma1; x += ffn(LN(x)(1+scale2)+shift2)*gamma2."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float, drop_path: float = 0.0):
        super().__init__()
        self.width = width
        self.attn = SelfAttention(width, heads)
        self.ffn = FFN(width, round(width * mlp_ratio))
        self.ln_wo_grad = nn.LayerNorm(width, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor, mask: torch.Tensor | None, bg: int, ed: int):
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada_lin(cond_BD).view(-1, 1, 6, self.width).unbind(2)
        x = x + self.drop_path(self.attn(self.ln_wo_grad(x).mul(scale1.add(1)).add_(shift1), mask, bg, ed).mul_(gamma1))
        x = x + self.drop_path(self.ffn(self.ln_wo_grad(x).mul(scale2.add(1)).add_(shift2)).mul(gamma2))
        return x


class AdaLNHead(nn.Module):
    def __init__(self, width: int, eps: float):
        super().__init__()
        self.width = width
        self.ln_wo_grad = nn.LayerNorm(width, eps=eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.width).unbind(2)
        return self.ln_wo_grad(x).mul(scale.add(1)).add_(shift)


def init_weights(model: nn.Module, width: int, depth: int, init_head: float = 0.02,
                 init_adaln: float = 0.5, init_adaln_gamma: float = 1e-5) -> None:
    """The published initialisation (for training from scratch): small residual branches and head."""
    std = math.sqrt(1 / width / 3)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    model.head.weight.data.mul_(init_head)
    model.head.bias.data.zero_()
    model.head_nm.ada_lin[-1].weight.data.mul_(init_adaln)
    for block in model.blocks:
        block.attn.proj.weight.data.div_(math.sqrt(2 * depth))
        block.ffn.fc2.weight.data.div_(math.sqrt(2 * depth))
        w = block.ada_lin[-1].weight.data
        w[2 * width:].mul_(init_adaln)
        w[:2 * width].mul_(init_adaln_gamma)
