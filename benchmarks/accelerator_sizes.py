"""What each mode of `benchmarks.accelerator` runs (full, --quick, --smoke) and the configs it builds.

Shared by the correctness checks (`accelerator_checks`) and the timing (`accelerator`). The configs
come from experiments/configs, imported lazily: they need ml_collections, which GPU images often
lack (see `benchmarks.accelerator`'s docstring).
"""

from __future__ import annotations

import dataclasses

from difnet_jax.models import diffusion

DTYPES = ("float32", "bfloat16")
NUM_CLASSES = 21
# Every family variant the configs may offer; those missing from the table are reported as absent.
FULL_MODELS = ("difnet18", "difnet50", "simdeeplab18", "simdeeplab50", "pdn18_24nb_1m", "deeplabv3plus18")
QUICK_MODELS = ("difnet18", "difnet50", "simdeeplab18", "pdn18_24nb_1m", "deeplabv3plus18")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one mode runs."""

    mode: str
    matmul_size: int
    check_n: int  # not a multiple of check_block: the chunked backend pads and masks
    check_block: int
    ns: tuple[int, ...]
    batches: tuple[int, ...]
    sweep_dtypes: tuple[str, ...]
    block_size: int
    repeats: int
    models: tuple[str, ...]
    model_dtypes: tuple[str, ...]
    train_batch: int
    crop: int
    eval_size: int
    train_steps: int  # of the device-vs-CPU check
    bf16_curve: bool  # the bfloat16 loss curve against float32 (one more compile)
    e2e: bool
    budget_s: float | None


SIZES = {
    "full": Sizes("full", 8192, 1000, 256, (1681, 4096, 16384), (1, 16), DTYPES, diffusion.DEFAULT_BLOCK_SIZE, 10,
                  FULL_MODELS, DTYPES, 16, 321, 505, 4, True, True, None),
    "quick": Sizes("quick", 8192, 1000, 256, (1681, 4096, 16384), (1, 16), DTYPES, diffusion.DEFAULT_BLOCK_SIZE, 5,
                   QUICK_MODELS, DTYPES, 16, 321, 505, 3, True, True, 430.0),
    "smoke": Sizes("smoke", 256, 100, 32, (100,), (1,), ("float32",), 32, 2, ("difnet18",), ("float32",), 2, 33, 33, 2,
                   False, False, None),
}


# --- config helpers (the one place that knows where the diffusion backend key lives) --------------------------


def set_backend(config, name: str) -> None:
    """Sets the diffusion backend: `diffusion_backend` in the model family's own sub-dict (DifNet's) or the old
    flat `config.model.diffusion_backend`; models without a cascade are left alone."""
    model = config.model
    own = model.get(model.get("name", ""))
    if own is not None and "diffusion_backend" in own:
        own.diffusion_backend = name
    elif "diffusion_backend" in model:
        model.diffusion_backend = name


def get_backend(config) -> str | None:
    model = config.model
    own = model.get(model.get("name", ""))
    if own is not None and "diffusion_backend" in own:
        return own.diffusion_backend
    return model.get("diffusion_backend")


def synthetic_config(variant: str, dtype: str, sizes: Sizes):
    """`VARIANT,synthetic` (crop 81, batch 16, width 16) with SGD; under --smoke shrunk to width 8, crop 33,
    batch 2. Adam would turn rounding differences of near-zero gradients into whole lr-sized steps."""
    from experiments.configs.voc import get_config  # lazily: needs ml_collections

    config = get_config(f"{variant},synthetic")
    if sizes.mode == "smoke":
        config.model.width = 8
        config.model.aspp_rates = (1, 2)
        config.data.crop_size = sizes.crop
        config.train.batch_size = sizes.train_batch
    config.model.dtype = dtype
    config.train.optimizer = "sgd"
    config.train.lr = 0.05
    return config


def model_config(variant: str, dtype: str, sizes: Sizes):
    """The variant's VOC config (the paper's sizes) at crop `sizes.crop`, global batch `sizes.train_batch`;
    under --smoke the tiny synthetic one of the train check (so that its compiled step is reused)."""
    if sizes.mode == "smoke":
        return synthetic_config(variant, dtype, sizes)
    from experiments.configs.voc import get_config

    config = get_config(variant)
    config.model.dtype = dtype
    config.data.crop_size = sizes.crop
    config.train.batch_size = sizes.train_batch
    return config


def variants() -> tuple[str, ...]:
    from experiments.configs.variants import VARIANTS  # lazily: needs ml_collections

    return tuple(VARIANTS)
