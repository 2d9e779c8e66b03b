"""The few numbers every part of the project agrees on, each defined once.

- IGNORE_LABEL: VOC's void band, padding and every "not a class" pixel; no loss, no metric.
- OUTPUT_STRIDE: the stride of the DifNet/Sim-DeepLab/PDN seed grid (DeepLabV2's atrous ResNet):
  a 321 crop gives 41x41, a 505 canvas 64x64. Networks take 8k + 1 sizes so that the grid's
  corners sit on the image's corners.
- IMAGENET_MEAN / IMAGENET_STD: torchvision's normalisation, on the 0..255 scale.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

IGNORE_LABEL = 255
OUTPUT_STRIDE = 8
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255

# config.model.dtype -> the compute dtype (parameters always stay float32).
COMPUTE_DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}

# config.data.eval_mode: every image padded to one canvas (DifNet's protocol), each batch padded
# to its largest image, or crop-sized windows slid over it (difnet_jax/evaluation/report.py).
EVAL_MODES = ("pad", "whole", "sliding")
