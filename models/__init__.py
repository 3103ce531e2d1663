"""The VQVAE and VAR modules, their dataclass configs, builders and checkpoint loading (no generation here:
sampling, the scale loop and collaborative decoding live in `code/`)."""
from .build import (VAR_DEPTHS, build_vae, build_vae_var, build_var, cast_linear_weights_, check_compatible, load_vae,
                    load_var, var_from_state_dict)
from .pair import Pair, load_pair
from .var import VAR, VARConfig
from .vqvae import VQVAE, VQVAEConfig

__all__ = ["VQVAE", "VQVAEConfig", "VAR", "VARConfig", "VAR_DEPTHS", "build_vae", "build_var", "build_vae_var",
           "cast_linear_weights_", "check_compatible", "load_pair", "load_vae", "load_var", "Pair",
           "var_from_state_dict"]
