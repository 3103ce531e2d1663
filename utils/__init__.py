"""Checkpoint I/O, Hugging Face resolution and other helpers shared by the scripts."""
from .checkpoint import CheckpointError, atomic_save, read_state_dict
from .hub import CODE_REPO, VAE_FILE, VAR_REPO, resolve_checkpoint

__all__ = ["CheckpointError", "atomic_save", "read_state_dict", "resolve_checkpoint", "VAR_REPO", "CODE_REPO",
           "VAE_FILE"]
