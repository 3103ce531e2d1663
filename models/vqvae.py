"""The multi-scale VQVAE of VAR: images <-> K token maps."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .quant import MultiScaleQuantizer, QuantOutput
from .scales import PATCH_NUMS, check_patch_nums
from .vae_blocks import Decoder, Encoder


@dataclass
class VQVAEConfig:
    vocab_size: int = 4096
    z_channels: int = 32  # Cvae
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    patch_nums: tuple[int, ...] = field(default=PATCH_NUMS)
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    beta: float = 0.25
    dropout: float = 0.0

    def __post_init__(self):
        self.ch_mult, self.patch_nums = tuple(self.ch_mult), tuple(self.patch_nums)
        check_patch_nums(self.patch_nums)
        if self.ch % 32:
            raise ValueError(f"VQVAE width ch={self.ch} must be a multiple of 32 (GroupNorm groups)")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample

    def to_dict(self) -> dict:
        return asdict(self)


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig | None = None):
        super().__init__()
        self.config = c = config or VQVAEConfig()
        self.encoder = Encoder(c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.dropout)
        self.decoder = Decoder(c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.dropout)
        self.quantize = MultiScaleQuantizer(c.vocab_size, c.z_channels, c.patch_nums, c.quant_resi,
                                            c.share_quant_resi, c.beta)
        self.quant_conv = nn.Conv2d(c.z_channels, c.z_channels, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, 3, 1, 1)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def Cvae(self) -> int:
        return self.config.z_channels

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.config.patch_nums

    def encode_latent(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> continuous latent f (B, Cvae, h, w) before quantisation."""
        return self.quant_conv(self.encoder(img_B3HW))

    def forward(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, QuantOutput]:
        """Training: images -> (reconstruction, unclamped so that gradients pass; the quantiser's output, its loss
        and usage). Differentiable end to end (the quantiser's straight-through estimator)."""
        q = self.quantize(self.encode_latent(img_B3HW))
        return self.decoder(self.post_quant_conv(q.f_hat)), q

    @torch.no_grad()
    def img_to_tokens(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        """Images in [-1, 1] -> the K token maps, each (B, p*p) int64."""
        return self.quantize.f_to_tokens(self.encode_latent(img_B3HW))

    @torch.no_grad()
    def img_to_fhat(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.quantize.f_to_tokens(self.encode_latent(img_B3HW), return_fhat=True)[-1]

    def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent f_hat -> images in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp_(-1, 1)

    def fhat_to_unit(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Latent f_hat -> images in [0, 1] as float32, mapped after the upcast so that autocast cannot round it."""
        return self.fhat_to_img(f_hat).float().add_(1).mul_(0.5)

    def tokens_to_img(self, idx: list[torch.Tensor]) -> torch.Tensor:
        """The full token pyramid -> images in [-1, 1]."""
        return self.fhat_to_img(self.quantize.tokens_to_fhat(idx))

    def tokens_to_var_input(self, idx: list[torch.Tensor]) -> torch.Tensor:
        return self.quantize.tokens_to_var_input(idx)
