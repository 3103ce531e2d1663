"""VQVAE and VAR models, configs, builders and the shared generation loop."""
from .build import VAR_DEPTHS, build_vae, build_vae_var, build_var, load_vae, load_var
from .generation import DecodeState, TokenEdit, generate, generate_state, run_scales
from .sampling import SamplingConfig
from .var import VAR, VARConfig
from .vqvae import VQVAE, VQVAEConfig

__all__ = ["VQVAE", "VQVAEConfig", "VAR", "VARConfig", "SamplingConfig", "DecodeState", "TokenEdit", "VAR_DEPTHS",
           "build_vae", "build_var", "build_vae_var", "load_vae", "load_var", "generate", "generate_state",
           "run_scales"]
