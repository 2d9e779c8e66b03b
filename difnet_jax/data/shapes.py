"""Procedural VOC-like scenes for `synthetic_shapes`: 20 object classes + background.

Class = shape x material. Five shapes (disk, bar, triangle, ring, cross) and four
materials (warm or cool colours, plain or striped) give the 20 foreground classes;
0 is background and 255 a void band along every object boundary, as in VOC.
Local appearance alone is ambiguous on purpose:
- five classes share every colour and texture (a warm striped disk, triangle, bar,
  ring and cross differ only in their outline), so identity depends on the whole shape;
- bars, rings and crosses are thin structures, a grid cell or so wide at stride 8;
- the background holds distractor ellipses in object colours and textures, which
  are background however object-like their pixels look.
Every scene is a pure function of (seed, split, index).
"""

from __future__ import annotations

import colorsys

import numpy as np

from difnet_jax.constants import IGNORE_LABEL

SHAPES = ("disk", "bar", "triangle", "ring", "cross")
MATERIALS = ("warm", "warm-striped", "cool", "cool-striped")
CLASS_NAMES = ("background",) + tuple(f"{m}-{s}" for s in SHAPES for m in MATERIALS)
NUM_CLASSES = len(CLASS_NAMES)  # 21, as Pascal VOC
_SPLIT_IDS = {"train": 0, "validation": 1}


def _colour(rng: np.random.Generator, warm: bool) -> np.ndarray:
    hue = rng.uniform(-0.08, 0.12) % 1.0 if warm else rng.uniform(0.45, 0.7)
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0)))


def _material_pixels(rng, material: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of a material over rotated coordinates (u, v)."""
    base = _colour(rng, warm=material.startswith("warm"))
    out = np.broadcast_to(base, u.shape + (3,)).copy()
    if material.endswith("striped"):
        period = rng.uniform(4.0, 6.0)
        dark = np.sin(2 * np.pi * (u + rng.uniform(0, period)) / period) > 0
        out[dark] *= 0.45
    return out


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    dist = np.hypot(u, v)
    if shape == "disk":
        return dist <= radius
    if shape == "bar":
        return (np.abs(u) <= radius) & (np.abs(v) <= 0.3 * radius)
    if shape == "triangle":
        angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3  # outward normals of the sides
        inside = [u * np.cos(a) + v * np.sin(a) <= 0.6 * radius for a in angles]
        return inside[0] & inside[1] & inside[2]
    if shape == "ring":
        return (dist <= radius) & (dist >= 0.55 * radius)
    if shape == "cross":
        arm = 0.28 * radius
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    raise ValueError(f"unknown shape {shape!r}")


def _rotated_grid(rng, size: int, centre: np.ndarray):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - centre[0], xx - centre[1]
    return np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy


def void_band(label: np.ndarray) -> np.ndarray:
    """Marks with 255 every pixel whose 3x3 neighbourhood holds another class."""
    padded = np.pad(label, 1, mode="edge")
    size_y, size_x = label.shape
    boundary = np.zeros(label.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            boundary |= padded[dy : dy + size_y, dx : dx + size_x] != label
    return np.where(boundary, IGNORE_LABEL, label).astype(np.uint8)


def _background(rng: np.random.Generator, size: int, scene_size: int) -> np.ndarray:
    """(size, size, 3) floats in [0, 1]: a low-saturation colour under a patchwork of shaded tiles, and 0-2
    distractors (elongated ellipses in object materials, background by label) sized as in a `scene_size` scene."""
    base = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.45), rng.uniform(0.3, 0.85)))
    coarse = rng.normal(0.0, 0.12, (4, 4, 3))
    shading = np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1, 1)))[:size, :size]
    image = np.clip(base + shading, 0, 1)
    for _ in range(rng.integers(0, 3)):
        centre = rng.uniform(0.1 * size, 0.9 * size, 2)
        u, v = _rotated_grid(rng, size, centre)
        axis = rng.uniform(0.06, 0.16) * scene_size
        mask = (u / axis) ** 2 + (v / (axis * rng.uniform(0.25, 0.45))) ** 2 <= 1.0
        material = MATERIALS[rng.integers(len(MATERIALS))]
        image[mask] = _material_pixels(rng, material, u, v)[mask]
    return image


def render_scene(seed: int, split: str, index: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Returns (image uint8 (size, size, 3), label uint8 (size, size)) of one scene."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    image = _background(rng, size, size)
    label = np.zeros((size, size), dtype=np.uint8)
    # Objects: 1-3, placed apart where possible (a later one may still occlude an earlier one).
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(rng.integers(1, 4)):
        class_id = int(rng.integers(1, NUM_CLASSES))
        shape, material = SHAPES[(class_id - 1) // 4], MATERIALS[(class_id - 1) % 4]
        radius = rng.uniform(0.14, 0.3) * size
        for _attempt in range(10):
            centre = rng.uniform(radius * 0.7, size - radius * 0.7, 2)
            if all(np.hypot(*(centre - c)) > 0.9 * (radius + r) for c, r in placed):
                break
        placed.append((centre, radius))
        u, v = _rotated_grid(rng, size, centre)
        mask = _shape_mask(shape, u, v, radius)
        image[mask] = _material_pixels(rng, material, u, v)[mask]
        label[mask] = class_id
    image = image + rng.normal(0.0, 0.04, image.shape)
    image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return image, void_band(label)


def render_object(seed: int, split: str, index: int, size: int = 64, scene_size: int = 96, *,
                  with_mask: bool = False):
    """Returns (image uint8 (size, size, 3), class id in 1..20) of one classification image, plus the
    object's mask (size, size) bool if `with_mask`.

    The pretraining images (`synthetic_classes`, like ImageNet to VOC): one object of a class
    drawn uniformly on a scene's background with its distractors, at the scenes' pixel sizes
    (radius and distractor axes as fractions of `scene_size`, as `render_scene` draws them),
    centred at most 0.7 radius from the border. A stream of its own: no image repeats a scene.
    """
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index, 1])
    image = _background(rng, size, scene_size)
    class_id = int(rng.integers(1, NUM_CLASSES))
    shape, material = SHAPES[(class_id - 1) // 4], MATERIALS[(class_id - 1) % 4]
    radius = rng.uniform(0.14, 0.3) * scene_size
    low, high = sorted((radius * 0.7, size - radius * 0.7))
    centre = rng.uniform(low, high, 2)
    u, v = _rotated_grid(rng, size, centre)
    mask = _shape_mask(shape, u, v, radius)
    image[mask] = _material_pixels(rng, material, u, v)[mask]
    image = image + rng.normal(0.0, 0.04, image.shape)
    image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    return (image, class_id, mask) if with_mask else (image, class_id)
