"""The VAR transformer: next-scale prediction over a token pyramid, conditioned on a class by AdaLN."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .kv_cache import KVCache
from .scales import PATCH_NUMS, block_causal_bias, check_patch_nums, scale_ids, token_offsets
from .var_blocks import AdaLNBlock, AdaLNHead, init_weights


@dataclass
class VARConfig:
    depth: int = 16
    width: int = 0  # 0: 64 * depth, as published
    heads: int = 0  # 0: depth (head dim 64)
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    vocab_size: int = 4096
    cvae: int = 32
    patch_nums: tuple[int, ...] = field(default=PATCH_NUMS)
    norm_eps: float = 1e-6
    drop_path_rate: float = -1.0  # -1: 0.1 * depth / 24, as published

    def __post_init__(self):
        self.patch_nums = tuple(self.patch_nums)
        check_patch_nums(self.patch_nums)
        self.width = self.width or 64 * self.depth
        self.heads = self.heads or self.depth
        if self.depth < 1 or self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads} (depth {self.depth})")
        self.drop_path_rate = resolve_drop_path(self.drop_path_rate, self.depth)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def offsets(self) -> tuple[int, ...]:
        return token_offsets(self.patch_nums)

    @property
    def seq_len(self) -> int:
        return self.offsets[-1]

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_drop_path(rate: float, depth: int) -> float:
    """Stochastic depth of the last block; -1 means the published 0.1 x depth / 24."""
    return 0.1 * depth / 24 if rate < 0 else rate


class VAR(nn.Module):
    def __init__(self, config: VARConfig | None = None):
        super().__init__()
        self.config = c = config or VARConfig()
        C, first_l = c.width, c.patch_nums[0] ** 2
        self.word_embed = nn.Linear(c.cvae, C)
        self.class_emb = nn.Embedding(c.num_classes + 1, C)  # the last row is the unconditional class
        self.pos_start = nn.Parameter(torch.zeros(1, first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, c.seq_len, C))
        self.lvl_embed = nn.Embedding(c.num_scales, C)
        self.blocks = nn.ModuleList([AdaLNBlock(C, c.heads, c.mlp_ratio, c.norm_eps) for _ in range(c.depth)])
        self.set_drop_path(c.drop_path_rate)
        self.head_nm = AdaLNHead(C, c.norm_eps)
        self.head = nn.Linear(C, c.vocab_size)
        for name, buf in derived_buffers(c).items():
            if "." not in name:
                self.register_buffer(name, buf.to(self.pos_1LC.device))
        if self.pos_1LC.device.type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self, self.config.width, self.config.depth)
        std = (1 / self.config.width / 3) ** 0.5
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)

    # ---- inputs and outputs -------------------------------------------------------------------------
    def embed(self, cond_BD: torch.Tensor, inputs: torch.Tensor | None, bg: int, ed: int) -> torch.Tensor:
        """Tokens [bg, ed) as (B, ed - bg, C). `inputs` (B', ed - max(bg, first_l), Cvae) are the next-scale
        inputs, B' = B or B/2 (CFG: the conditional and unconditional halves share inputs)."""
        first_l = self.pos_start.shape[1]
        lvl_pos = self.lvl_embed(self.lvl_1L[:, bg:ed]) + self.pos_1LC[:, bg:ed]
        parts = []
        if bg == 0:
            B = cond_BD.shape[0]
            parts.append(cond_BD.unsqueeze(1).expand(B, first_l, -1) + self.pos_start.expand(B, -1, -1))
        if ed > max(bg, first_l):
            x = self.word_embed(inputs)
            parts.append(x.repeat(cond_BD.shape[0] // x.shape[0], 1, 1))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        return x + lvl_pos

    def hidden(self, x: torch.Tensor, cond_BD: torch.Tensor, bg: int, ed: int, blocks=None) -> torch.Tensor:
        """Run the blocks on tokens [bg, ed), attending block-causally to [0, ed) (cached or in x).
        `blocks` replaces self.blocks by callables with the same signature (the fast path's compiled blocks)."""
        mask = None
        if (bg, ed) not in self._single_scale_spans:
            mask = self.attn_bias_for_masking[:, :, bg:ed, :ed]
        for block in self.blocks if blocks is None else blocks:
            x = block(x, cond_BD, mask, bg, ed)
        return x

    def logits(self, h: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """(B, l, V) in float32 (float64 for a float64 model): as published, the head may run in reduced
        precision under autocast, and its input and output are upcast."""
        up = torch.promote_types(h.dtype, torch.float32)
        return self.head(self.head_nm(h.to(up), cond_BD).to(up)).to(up)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth rising linearly over the blocks, from 0 to `rate` (-1: 0.1 x depth / 24)."""
        c = self.config
        c.drop_path_rate = resolve_drop_path(rate, c.depth)
        for i, block in enumerate(self.blocks):
            block.drop_path.p = c.drop_path_rate * i / max(c.depth - 1, 1)

    def forward(self, labels_B: torch.Tensor, inputs: torch.Tensor, stop_scale: int | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, L', V) of scales 0..stop_scale-1 in one block-causal pass.

        `inputs` are the next-scale inputs of scales 1..K-1 (VQVAE.tokens_to_var_input); labels are used as
        given (drop them to the unconditional class before calling, for CFG training).
        """
        ed = self.config.offsets[stop_scale if stop_scale is not None else self.config.num_scales]
        first_l = self.pos_start.shape[1]
        cond_BD = self.class_emb(labels_B)
        x = self.embed(cond_BD, inputs[:, : max(ed - first_l, 0)], 0, ed)
        return self.logits(self.hidden(x, cond_BD, 0, ed), cond_BD)

    # ---- KV cache -----------------------------------------------------------------------------------
    @property
    def _single_scale_spans(self) -> set[tuple[int, int]]:
        o = self.config.offsets
        return {(o[k], o[k + 1]) for k in range(self.config.num_scales)}

    def setup_cache(self, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> None:
        c = self.config
        for block in self.blocks:
            block.attn.kv_cache = KVCache(batch, c.heads, length, c.width // c.heads, dtype, device)

    def free_cache(self) -> None:
        for block in self.blocks:
            block.attn.kv_cache = None

    @property
    def cache_length(self) -> int | None:
        cache = self.blocks[0].attn.kv_cache
        return None if cache is None else cache.length


def derived_buffers(config: VARConfig) -> dict[str, torch.Tensor]:
    """The persistent buffers the official checkpoints carry but that follow from the config alone, on the CPU
    whatever device context is open (on meta they would have no values, and computing them there is only overhead)."""
    with torch.device("cpu"):
        bufs = {"lvl_1L": scale_ids(config.patch_nums)[None],
                "attn_bias_for_masking": block_causal_bias(config.patch_nums)}
        for i in range(config.depth):
            bufs[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros(config.width)
    return bufs
