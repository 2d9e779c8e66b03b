"""The cascade benchmarks' problem (DifNet's: 5 walks, Psi of 64 channels, 21 classes) and its FLOP count.

Its own module so that `benchmarks.cascade` and `benchmarks.accelerator` share it without one
importing the other's command-line flags.
"""

from __future__ import annotations

CHANNELS, CLASSES, WALKS = 64, 21, 5


def model_flops(batch: int, n: int) -> float:
    """Matmul FLOPs of the dense cascade fwd+bwd: per walk 2 N^2 (C + K) forward and twice that backward."""
    return 6.0 * WALKS * batch * n * n * (CHANNELS + CLASSES)
