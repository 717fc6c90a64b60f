"""How the built-in segmentation data is drawn: scenes of textured objects on a plain background, each
with its exact label mask (``vitreduce.data.segmentation_synth`` writes them in the ADE20K layout).

A scene is a background of one random colour and 1 to ``MAX_OBJECTS`` objects. An object's class is its
texture (horizontal, vertical or diagonal stripes, checkerboard, dots, rings: "stuff" that a patch can
recognise locally, as most ADE20K classes are), its outline a random ellipse, triangle or square, its two
colours random for every object, so colour says nothing about the class. Later objects occlude earlier
ones. Object outlines have hard edges and the mask is computed from the same inside/outside test that
paints them, so every pixel's label is exact: the pixel shows the labelled object's texture, or the
background colour for label 0. Gaussian pixel noise is added last.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vitreduce.data.shapes import Array, _colour_pairs, _disc, _rotate, _triangle, _u, _wave

MAX_OBJECTS = 3
NOISE = 0.05  # maximum per-image std of the pixel noise (pixels in [0, 1])


def _stripes(degrees: float) -> Callable:
    def texture(rng, n, x, y):
        u, _ = _rotate(rng, n, x, y, np.full((n, 1, 1), np.deg2rad(degrees)) + _u(rng, -0.15, 0.15, n))
        return _wave(u, _u(rng, 0.25, 0.45, n), _u(rng, 0, 2 * np.pi, n))

    return texture


def _checker(rng, n, x, y):
    u, v = _rotate(rng, n, x, y, _u(rng, 0, np.pi / 2, n))
    period = _u(rng, 0.3, 0.5, n)
    du, dv = _wave(u, period, _u(rng, 0, 2 * np.pi, n)), _wave(v, period, _u(rng, 0, 2 * np.pi, n))
    return np.sign(du * dv) * np.minimum(abs(du), abs(dv))


def _dots(rng, n, x, y):
    u, v = _rotate(rng, n, x, y, _u(rng, 0, np.pi / 2, n))
    period = _u(rng, 0.25, 0.4, n)
    return period * 0.3 - np.hypot(np.mod(u, period) - period / 2, np.mod(v, period) - period / 2)


def _rings(rng, n, x, y):
    u, v = _rotate(rng, n, x, y, np.zeros((n, 1, 1)), centre=0.8)
    return _wave(np.hypot(u, v), _u(rng, 0.2, 0.35, n), _u(rng, 0, 2 * np.pi, n))


# Label k (from 1) is TEXTURES[k - 1]; label 0 is the background.
TEXTURES: tuple[tuple[str, Callable], ...] = (
    ("stripes_h", _stripes(0.0)),
    ("stripes_v", _stripes(90.0)),
    ("stripes_diag", _stripes(45.0)),
    ("checker", _checker),
    ("dots", _dots),
    ("rings", _rings),
)
BACKGROUND = "background"


def _square(rng, n, x, y):
    u, v = _rotate(rng, n, x, y, _u(rng, 0, np.pi / 2, n), centre=0.5)
    return _u(rng, 0.3, 0.6, n) - np.maximum(abs(u), abs(v))


_OUTLINES = (_disc, _triangle, _square)  # signed distance, positive inside


def _outline(rng: np.random.Generator, n: int, x: Array, y: Array) -> Array:
    """A random outline per image, (n, S, S) True inside."""
    kinds = rng.integers(len(_OUTLINES), size=n)
    inside = np.zeros((n, x.shape[-1], x.shape[-1]), dtype=bool)
    for kind, draw in enumerate(_OUTLINES):
        inside |= (kinds == kind)[:, None, None] & (draw(rng, n, x, y) > 0)
    return inside


def render_scenes(rng: np.random.Generator, n: int, size: int, classes: int,
                  noise: float = NOISE) -> tuple[Array, Array]:
    """n scenes: images uint8 (n, size, size, 3) and masks uint8 (n, size, size) with labels 0..classes-1.

    Args:
        classes: labels including the background, 2 to ``len(TEXTURES) + 1``.
        noise: maximum per-image std of the pixel noise (0: none).
    """
    centres = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = centres[None, None, :], centres[None, :, None]  # (1, 1, S), (1, S, 1)
    pixel = 2 / size
    img = np.broadcast_to(rng.uniform(0, 1, size=(n, 1, 1, 3)), (n, size, size, 3)).copy()
    mask = np.zeros((n, size, size), dtype=np.uint8)
    count = rng.integers(1, MAX_OBJECTS + 1, size=n)
    for slot in range(MAX_OBJECTS):
        label = rng.integers(1, classes, size=n)
        inside = _outline(rng, n, x, y) & (slot < count)[:, None, None]  # (n, S, S)
        bg, fg = _colour_pairs(rng, n)
        paint = np.zeros((n, size, size, 3))
        for k in range(1, classes):  # each texture drawn for all n, kept where this slot's label is k
            cover = np.clip(0.5 + TEXTURES[k - 1][1](rng, n, x, y) / pixel, 0, 1)[..., None]
            paint = np.where((label == k)[:, None, None, None], bg + cover * (fg - bg), paint)
        img = np.where(inside[..., None], paint, img)
        mask = np.where(inside, label[:, None, None].astype(np.uint8), mask)
    img = img + rng.normal(size=img.shape) * _u(rng, 0.0, noise, n)[..., None]
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), mask
