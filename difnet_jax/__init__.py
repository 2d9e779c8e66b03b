"""difnet_jax: diffusion-based semantic segmentation in JAX/Flax (DifNet and baselines)."""
