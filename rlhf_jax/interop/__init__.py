"""Interoperability with other model formats: Hugging Face checkpoints (rlhf_jax.interop.hf)."""
