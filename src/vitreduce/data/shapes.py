"""How the built-in dataset's images are drawn: one shape or texture family per class, at a random
position, scale, rotation and phase, in colours drawn alike for every class, with pixel noise and line
distractors (``vitreduce.data.synth`` writes them as a dataset)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Difficulty, tuned so a tiny ViT (patch 4, dim 96, depth 4) reaches ~45% val top-1 after about a
# minute of CPU training (6 epochs at the defaults) and keeps improving after that.
DISTRACTORS = 1  # line segments that may be drawn over the shape
DISTRACTOR_P = 0.5  # chance that each one is
NOISE = 0.08  # maximum per-image std of the Gaussian pixel noise (pixels in [0, 1])
MIN_CONTRAST = 0.4  # least RGB distance between foreground and background colours

Array = np.ndarray
# A family draws n shapes over the pixel grid x, y (1, S, S) in [-1, 1] and returns their signed
# distance (n, S, S) in the same units: positive inside the foreground.
Family = Callable[[np.random.Generator, int, Array, Array], Array]


def _u(rng: np.random.Generator, lo: float, hi: float, n: int) -> Array:
    """n uniform draws shaped (n, 1, 1) to broadcast over the pixel grid."""
    return rng.uniform(lo, hi, size=(n, 1, 1))


def _rotate(rng: np.random.Generator, n: int, x: Array, y: Array, theta: Array, centre: float = 0.35):
    """Coordinates (n, S, S) relative to a random centre, rotated by theta (radians)."""
    dx, dy = x - _u(rng, -centre, centre, n), y - _u(rng, -centre, centre, n)
    c, s = np.cos(theta), np.sin(theta)
    return c * dx + s * dy, -s * dx + c * dy


def _wave(t: Array, period: Array, phase: Array) -> Array:
    # period/2pi * sin(...) equals the distance to the nearest zero crossing near the crossing,
    # which is all the anti-aliased edge needs.
    return period / (2 * np.pi) * np.sin(2 * np.pi * t / period + phase)


def _window(rng: np.random.Generator, n: int, x: Array, y: Array, d: Array) -> Array:
    """Clip a texture to a random disc (sometimes larger than the image) so its extent varies."""
    radius = _u(rng, 0.6, 1.5, n)
    dx, dy = x - _u(rng, -0.4, 0.4, n), y - _u(rng, -0.4, 0.4, n)
    return np.minimum(d, radius - np.hypot(dx, dy))


def _stripes(angle_deg: tuple[float, ...]) -> Family:
    def family(rng, n, x, y):
        base = np.deg2rad(rng.choice(angle_deg, size=(n, 1, 1)))
        u, _ = _rotate(rng, n, x, y, base + np.deg2rad(rng.normal(0, 8, size=(n, 1, 1))))
        period = _u(rng, 0.3, 0.7, n)
        # The offset changes the duty cycle, so stripe width is not a class cue by itself.
        d = _wave(u, period, _u(rng, 0, 2 * np.pi, n)) + period / (2 * np.pi) * _u(rng, -0.4, 0.4, n)
        return _window(rng, n, x, y, d)

    return family


def _checker(rng, n, x, y):
    u, v = _rotate(rng, n, x, y, _u(rng, 0, np.pi / 2, n))
    period = _u(rng, 0.35, 0.8, n)
    du, dv = _wave(u, period, _u(rng, 0, 2 * np.pi, n)), _wave(v, period, _u(rng, 0, 2 * np.pi, n))
    return _window(rng, n, x, y, np.sign(du * dv) * np.minimum(abs(du), abs(dv)))


def _rings(rng, n, x, y):
    u, v = _rotate(rng, n, x, y, np.zeros((n, 1, 1)), centre=0.5)
    return _window(rng, n, x, y, _wave(np.hypot(u, v), _u(rng, 0.3, 0.6, n), _u(rng, 0, 2 * np.pi, n)))


def _disc(rng, n, x, y):
    u, v = _rotate(rng, n, x, y, _u(rng, 0, np.pi, n))
    a = _u(rng, 0.3, 0.7, n)
    b = a * _u(rng, 0.5, 1.0, n)
    # Distance scaled by the minor axis: exact for circles, close enough at the edge of ellipses.
    return (1 - np.hypot(u / a, v / b)) * b


def _cross(rng, n, x, y):
    u, v = _rotate(rng, n, x, y, _u(rng, 0, np.pi / 2, n))
    arm, half_width = _u(rng, 0.4, 0.8, n), _u(rng, 0.05, 0.12, n)
    along_u = np.minimum(half_width - abs(v), arm - abs(u))
    along_v = np.minimum(half_width - abs(u), arm - abs(v))
    return np.maximum(along_u, along_v)


def _frame(rng, n, x, y):
    u, v = _rotate(rng, n, x, y, _u(rng, 0, np.pi / 2, n))
    half, width = _u(rng, 0.35, 0.75, n), _u(rng, 0.1, 0.2, n)
    depth = half - np.maximum(abs(u), abs(v))  # how far inside the square's outer edge
    return width / 2 - abs(depth - width / 2)


def _dots(rng, n, x, y):
    u, v = _rotate(rng, n, x, y, _u(rng, 0, np.pi / 2, n))
    period = _u(rng, 0.3, 0.55, n)
    du = np.mod(u, period) - period / 2
    dv = np.mod(v, period) - period / 2
    return _window(rng, n, x, y, period * _u(rng, 0.2, 0.33, n) - np.hypot(du, dv))


def _triangle(rng, n, x, y):
    u, v = _rotate(rng, n, x, y, np.zeros((n, 1, 1)))
    inradius, theta = _u(rng, 0.2, 0.45, n), _u(rng, 0, 2 * np.pi, n)
    # Inside an equilateral triangle = on the inner side of its three edge lines.
    reach = [u * np.cos(theta + k * 2 * np.pi / 3) + v * np.sin(theta + k * 2 * np.pi / 3) for k in range(3)]
    return inradius - np.maximum(np.maximum(reach[0], reach[1]), reach[2])


FAMILIES: tuple[tuple[str, Family], ...] = (
    ("stripes_h", _stripes((0.0,))),
    ("stripes_v", _stripes((90.0,))),
    ("stripes_diag", _stripes((45.0, 135.0))),
    ("checker", _checker),
    ("rings", _rings),
    ("disc", _disc),
    ("cross", _cross),
    ("frame", _frame),
    ("dots", _dots),
    ("triangle", _triangle),
)


def _segments(rng: np.random.Generator, n: int, x: Array, y: Array) -> Array:
    """Signed distance to a random thin line segment per image: a distractor that looks like an edge."""
    ax, ay, bx, by = (_u(rng, -1, 1, n) for _ in range(4))
    ex, ey = bx - ax, by - ay
    t = np.clip(((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey + 1e-9), 0, 1)
    return _u(rng, 0.03, 0.07, n) - np.hypot(x - ax - t * ex, y - ay - t * ey)


def _colour_pairs(rng: np.random.Generator, n: int) -> tuple[Array, Array]:
    """Background and foreground colours (n, 1, 1, 3), redrawn as pairs until they differ enough.

    Redrawing whole pairs keeps the two colours exchangeable, so the expected mean colour of an
    image stays mid-grey whatever fraction of it the shape covers.
    """
    bg, fg = rng.uniform(0, 1, size=(2, n, 1, 1, 3))
    for _ in range(20):
        close = np.linalg.norm(fg - bg, axis=-1, keepdims=True) < MIN_CONTRAST
        if not close.any():
            break
        new_bg, new_fg = rng.uniform(0, 1, size=(2, n, 1, 1, 3))
        bg, fg = np.where(close, new_bg, bg), np.where(close, new_fg, fg)
    return bg, fg


def render(rng: np.random.Generator, family: Family, n: int, size: int) -> Array:
    """n images of one family as uint8 (n, size, size, 3)."""
    centres = (np.arange(size) + 0.5) / size * 2 - 1
    x, y = centres[None, None, :], centres[None, :, None]  # (1, 1, S), (1, S, 1)
    pixel = 2 / size
    # Anti-aliased coverage: 0.5 on the edge, 0 or 1 half a pixel either side of it.
    cover = np.clip(0.5 + family(rng, n, x, y) / pixel, 0, 1)[..., None]  # (n, S, S, 1)
    # Same colour distribution for every class, so the mean colour carries no label information.
    bg, fg = _colour_pairs(rng, n)
    img = bg + cover * (fg - bg)
    for _ in range(DISTRACTORS):
        present = rng.random((n, 1, 1, 1)) < DISTRACTOR_P
        line = np.clip(0.5 + _segments(rng, n, x, y) / pixel, 0, 1)[..., None] * present
        img += line * (rng.uniform(0, 1, size=(n, 1, 1, 3)) - img)
    img += rng.normal(size=img.shape) * _u(rng, 0.0, NOISE, n)[..., None]
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
