"""Builders with the published defaults, and loaders that infer the config from the checkpoint itself."""
from __future__ import annotations

import math
import os
import re
from typing import Sequence

import torch
import torch.nn as nn

from utils.checkpoint import CheckpointError, check_state_dict, read_checkpoint, read_state_dict
from utils.hub import VAE_FILE, resolve_checkpoint, var_file

from .meta import device_context, on_meta
from .scales import PATCH_NUMS
from .var import VAR, VARConfig, derived_buffers
from .vqvae import VQVAE, VQVAEConfig

VAR_DEPTHS = (16, 20, 24, 30)


def build_var(depth: int = 16, device: str | torch.device = "cpu", **overrides) -> VAR:
    """A VAR with the published layout for `depth` (override any VARConfig field); device='meta' allocates nothing."""
    with device_context(device):
        return VAR(VARConfig(depth=depth, **overrides))


def build_vae(device: str | torch.device = "cpu", **overrides) -> VQVAE:
    with device_context(device):
        return VQVAE(VQVAEConfig(**overrides))


def build_vae_var(depth: int = 16, device: str | torch.device = "cpu", vae_overrides: dict | None = None,
                  **var_overrides) -> tuple[VQVAE, VAR]:
    """A matching (VQVAE, VAR) pair with published defaults and random weights."""
    vae = build_vae(device, **(vae_overrides or {}))
    c = vae.config
    var = build_var(depth, device, vocab_size=c.vocab_size, cvae=c.z_channels, patch_nums=c.patch_nums, **var_overrides)
    return vae, var


def var_config_from_state_dict(sd: dict[str, torch.Tensor]) -> VARConfig:
    depth = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    try:
        width, cvae = sd["word_embed.weight"].shape
        patch_nums = infer_patch_nums(sd)
        return VARConfig(depth=depth, width=width, heads=sd["blocks.0.attn.scale_mul_1H11"].shape[1],
                         mlp_ratio=sd["blocks.0.ffn.fc1.weight"].shape[0] / width,
                         num_classes=sd["class_emb.weight"].shape[0] - 1, vocab_size=sd["head.weight"].shape[0],
                         cvae=cvae, patch_nums=patch_nums)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"not a VAR state dict (cannot read its layout: {e})") from None


def infer_patch_nums(sd: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """From the scale id of every token (lvl_1L) when the file has it, else the published schedule if it fits."""
    lvl = sd.get("lvl_1L")
    if lvl is not None and lvl.device.type != "meta":
        return tuple(math.isqrt(n) for n in torch.bincount(lvl.flatten()).tolist())
    num_scales, seq_len = sd["lvl_embed.weight"].shape[0], sd["pos_1LC"].shape[1]
    if (num_scales, seq_len) == (len(PATCH_NUMS), sum(p * p for p in PATCH_NUMS)):
        return PATCH_NUMS
    raise CheckpointError(f"the file has no lvl_1L buffer and its {num_scales} scales / {seq_len} tokens are not the "
                          "published schedule, so patch_nums cannot be inferred; save the full state dict")


def vae_config_from_state_dict(sd: dict[str, torch.Tensor], patch_nums=PATCH_NUMS) -> VQVAEConfig:
    try:
        ch = sd["encoder.conv_in.weight"].shape[0]
        levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
        ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels))
        blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
        shared = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"quantize\.quant_resi\.qresi_ls\.(\d+)\.", k)))
        vocab, z = sd["quantize.embedding.weight"].shape
        return VQVAEConfig(vocab_size=vocab, z_channels=z, ch=ch, ch_mult=ch_mult, num_res_blocks=blocks,
                           patch_nums=tuple(patch_nums), share_quant_resi=shared)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"not a VQVAE state dict (cannot read its layout: {e})") from None


def cast_linear_weights_(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """In place: every nn.Linear's weight and bias to `dtype` (the matmuls, ~99% of a VAR's parameters).

    Embeddings, position tables and the attention's scale keep their dtype, so the residual stream stays float32
    as under the published setting (fp32 weights under autocast). A chain whose linear weights are reduced
    precision generates under autocast to that dtype by itself (code.loop.precision), eager and fast alike, and
    computes exactly what fp32 weights under that autocast compute; the weights take half the memory.
    """
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.to(dtype)
    return module


def _load_into(model: nn.Module, sd: dict, path, what: str, derived: dict, device, dtype) -> nn.Module:
    check_state_dict(model.state_dict(), sd, path, what, optional=set(derived))
    sd = {**derived, **sd}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device=device, dtype=dtype)


def load_var(source: str | os.PathLike, depth: int | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None, ckpt_dir=None, linear_dtype: torch.dtype | None = None) -> VAR:
    """Load a VAR from a path, `ckpt_dir`, or a published name ('var_d30.pth', 'refiner_8.pth').

    The layout comes from the file; `depth`, if given, must agree with it. `dtype` casts every tensor;
    `linear_dtype` (e.g. torch.bfloat16, for inference) casts the linear layers only (see cast_linear_weights_).
    """
    if isinstance(source, int):
        source = var_file(source)
    path = resolve_checkpoint(source, ckpt_dir)
    model = var_from_state_dict(read_state_dict(path), path, depth, device, dtype)
    return cast_linear_weights_(model, linear_dtype) if linear_dtype is not None else model


def var_from_state_dict(sd: dict[str, torch.Tensor], path, depth: int | None = None, device="cpu",
                        dtype: torch.dtype | None = None) -> VAR:
    """Strict load: every learned key with its shape; the derived buffers may be present or not."""
    try:
        config = var_config_from_state_dict(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if depth is not None and depth != config.depth:
        raise CheckpointError(f"{path} holds a depth-{config.depth} VAR but depth {depth} was requested: "
                              f"pass depth {config.depth} or the checkpoint of a depth-{depth} model")
    with on_meta():
        model = VAR(config)
    return _load_into(model, sd, path, f"a depth-{config.depth} VAR", derived_buffers(config), device, dtype).eval()


def load_vae(source: str | os.PathLike = VAE_FILE, patch_nums: Sequence[int] | None = None,
             device: str | torch.device = "cpu", dtype: torch.dtype | None = None, ckpt_dir=None) -> VQVAE:
    """Load the multi-scale VQVAE. `patch_nums`: those of the VARs it serves; by default the file's own (a file
    written by train_vqvae.py carries its config), else the published schedule."""
    path = resolve_checkpoint(source, ckpt_dir)
    sd, extras = read_checkpoint(path)
    saved = extras.get("config", {}).get("patch_nums") if isinstance(extras.get("config"), dict) else None
    if saved is not None and patch_nums is not None and tuple(saved) != tuple(patch_nums):
        raise CheckpointError(f"{path} is a VQVAE for scales {tuple(saved)}, not {tuple(patch_nums)}: the VQVAE "
                              "and the VARs must share one tokenizer; pass the VQVAE the VARs were trained with")
    return vae_from_state_dict(sd, path, patch_nums or saved or PATCH_NUMS, device, dtype)


def vae_from_state_dict(sd: dict[str, torch.Tensor], path, patch_nums: Sequence[int] = PATCH_NUMS, device="cpu",
                        dtype: torch.dtype | None = None) -> VQVAE:
    try:
        config = vae_config_from_state_dict(sd, patch_nums)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    usage = sd.get("quantize.ema_vocab_hit_SV")  # one row per scale the tokenizer was trained with
    if usage is not None and usage.ndim == 2 and usage.shape[0] != len(config.patch_nums):
        raise CheckpointError(
            f"{path} is a VQVAE of {usage.shape[0]} scales (its quantize.ema_vocab_hit_SV has {usage.shape[0]} rows) "
            f"but patch_nums {config.patch_nums} has {len(config.patch_nums)}: use the VQVAE the VARs were trained "
            "with (or, to serve another schedule on purpose, save this one without that usage statistic)")
    with on_meta():
        model = VQVAE(config)
    derived = {"quantize.ema_vocab_hit_SV": torch.zeros(len(config.patch_nums), config.vocab_size)}
    return _load_into(model, sd, path, "the multi-scale VQVAE", derived, device, dtype).eval()


def check_compatible(vae: VQVAE, models: Sequence[VAR]) -> None:
    """Every model of a chain must speak the VQVAE's token language and know the same classes."""
    for i, m in enumerate(models):
        c = m.config
        for what, mine, theirs in (("patch_nums", c.patch_nums, vae.patch_nums), ("vocab_size", c.vocab_size,
                                   vae.vocab_size), ("latent channels (Cvae)", c.cvae, vae.Cvae)):
            if mine != theirs:
                raise ValueError(f"model {i} (depth {c.depth}) has {what}={mine} but the VQVAE has {theirs}: "
                                 "all models in a collaborative chain must share one tokenizer")
        if c.num_classes != models[0].config.num_classes:
            raise ValueError(f"model {i} has {c.num_classes} classes but model 0 has {models[0].config.num_classes}")
