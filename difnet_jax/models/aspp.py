"""DeepLabV2's atrous spatial pyramid pooling classifier (Chen et al. 2017).

Four parallel 3x3 convolutions with dilations 6/12/18/24, each straight to K
class scores, summed. Initialised N(0, 0.01) as in DeepLab.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def class_conv(num_classes: int, *, dilation: int = 1, dtype: Any = jnp.float32, name: str | None = None):
    """3x3 convolution straight to class scores, 'same' padding, with bias."""
    return nn.Conv(
        num_classes, (3, 3), kernel_dilation=dilation, padding=((dilation, dilation),) * 2,
        kernel_init=nn.initializers.normal(0.01), dtype=dtype, name=name,
    )


class ASPP(nn.Module):
    """Sum of dilated 3x3 class convolutions: (B, h, w, C) -> (B, h, w, K)."""

    num_classes: int
    rates: Sequence[int] = (6, 12, 18, 24)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return sum(
            class_conv(self.num_classes, dilation=r, dtype=self.dtype, name=f"rate{r}")(x) for r in self.rates
        )
