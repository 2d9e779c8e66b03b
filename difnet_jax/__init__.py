"""difnet_jax: diffusion-based semantic segmentation in JAX/Flax (DifNet and baselines).

`difnet_jax.load(workdir)` restores a trained run as a `difnet_jax.trained_run.TrainedModel`
(imported on first use, so that `import difnet_jax.<module>` stays light).
"""


def __getattr__(name: str):
    if name == "load":
        from difnet_jax.trained_run import load

        return load
    raise AttributeError(f"module 'difnet_jax' has no attribute {name!r}")
