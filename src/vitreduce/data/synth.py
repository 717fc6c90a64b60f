"""A procedurally generated image-classification dataset, so examples and tests need no download.

Each class is a shape or texture family (stripes at a class-specific angle, checkerboards, rings,
discs, crosses, ...) drawn at a random position, scale, rotation and phase. Foreground and
background colours are drawn from the same distribution for every class, so the mean colour of an
image says nothing about its class: only spatial structure does. Pixel noise, line distractors
and textures clipped to random windows keep a tiny ViT well below 100%.

`generate` makes images in memory; `write_synth_dataset` writes them as an ImageFolder tree
(`OUT/train/<class>/*.png`, `OUT/val/<class>/*.png`) plus a marker file recording the parameters.
The same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from vitreduce.config_tree import kwargs_from
from vitreduce.errors import VitreduceError

# Bump when a change alters the images a seed produces; recorded in the marker file.
GENERATOR_VERSION = 1
MARKER = "vitreduce_synth.json"
SPLITS = ("train", "val")
# Defaults of `write_synth_dataset` and `vitreduce data synth`: 6,000 32x32 images in a few seconds.
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, SIZE = 10, 500, 100, 32
# Pixels per generation chunk: bounds memory at large sizes (16 MiB per float64 array).
_CHUNK_ELEMENTS = 1 << 21

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


def class_names(classes: int = CLASSES) -> list[str]:
    """Folder names of the first `classes` families, e.g. `c0_stripes_h`; sorted order = label order."""
    _check(classes=classes)
    return [f"c{i}_{name}" for i, (name, _) in enumerate(FAMILIES[:classes])]


def _check(classes: int = CLASSES, size: int = SIZE, **counts: int) -> None:
    if not 2 <= classes <= len(FAMILIES):
        raise VitreduceError(f"--classes is {classes}; use 2 to {len(FAMILIES)} (one per shape family)")
    if size < 8:
        raise VitreduceError(f"--size is {size}; use at least 8 pixels")
    for name, count in counts.items():
        if count < 1:
            raise VitreduceError(f"--{name.replace('_', '-')} is {count}; use at least 1")


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


def _render(rng: np.random.Generator, family: Family, n: int, size: int) -> Array:
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


def _iter_class(seed: int, split: str, label: int, count: int, size: int) -> Iterator[Array]:
    """The images of one class and split, in chunks; their own RNG stream, so classes are independent."""
    rng = np.random.default_rng([seed, SPLITS.index(split), label, GENERATOR_VERSION])
    chunk = max(1, _CHUNK_ELEMENTS // (size * size))
    for start in range(0, count, chunk):
        yield _render(rng, FAMILIES[label][1], min(chunk, count - start), size)


def generate(
    per_class: int, seed: int = 0, classes: int = CLASSES, size: int = SIZE, split: str = "train"
) -> tuple[Array, Array]:
    """Images and labels in memory, identical to what `write_synth_dataset` writes for that split.

    Args:
        per_class: images per class.
        seed: non-negative integer; the same seed gives the same images.
        classes: number of classes (shape families), 2 to `len(FAMILIES)`.
        size: image side in pixels, at least 8.
        split: "train" or "val"; the splits use different random streams.

    Returns:
        images uint8 (N, size, size, 3) and labels int64 (N,), class-major, N = classes * per_class.
    """
    _check_seed(seed)
    _check(classes, size, per_class=per_class)
    if split not in SPLITS:
        raise VitreduceError(f"split is {split!r}; use one of {SPLITS}")
    images = [c for label in range(classes) for c in _iter_class(seed, split, label, per_class, size)]
    return np.concatenate(images), np.repeat(np.arange(classes, dtype=np.int64), per_class)


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise VitreduceError(f"--seed is {seed!r}; use a non-negative integer")


def write_synth_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    classes: int = CLASSES,
    train_per_class: int = TRAIN_PER_CLASS,
    val_per_class: int = VAL_PER_CLASS,
    size: int = SIZE,
    overwrite: bool = False,
) -> Path:
    """Write the dataset as an ImageFolder tree: OUT/{train,val}/<class>/NNNNN.png plus OUT/vitreduce_synth.json.

    Everything is written to a temporary directory beside OUT and renamed into place at the end, so
    a crash never leaves a dataset that looks complete (the marker file is moved in last).

    Args:
        out_dir: target directory; must be absent or empty unless `overwrite`.
        seed: non-negative integer; the same seed gives byte-identical files.
        classes: number of classes, 2 to `len(FAMILIES)`.
        train_per_class: training images per class.
        val_per_class: validation images per class.
        size: image side in pixels, at least 8.
        overwrite: replace train/, val/ and the marker of a dataset this function wrote before;
            other files in OUT are left alone.

    Returns:
        The dataset root, OUT.

    Raises:
        VitreduceError: bad arguments, or OUT holds files this tool did not write; nothing is written.
    """
    _check_seed(seed)
    _check(classes, size, train_per_class=train_per_class, val_per_class=val_per_class)
    out = Path(out_dir)
    replace = _check_target(out, overwrite)
    names = class_names(classes)
    counts = {"train": train_per_class, "val": val_per_class}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for split, count in counts.items():
            for label, name in enumerate(names):
                _write_class(tmp / split / name, seed, split, label, count, size)
        marker = {
            "tool": "vitreduce data synth",
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "size": size,
            "classes": names,
            "train_per_class": train_per_class,
            "val_per_class": val_per_class,
        }
        text = json.dumps(marker, indent=2) + "\n"
        (tmp / MARKER).write_text(text)
        if replace:
            _swap_in(tmp, out)
        else:
            _rename_into(tmp, out, text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_class(folder: Path, seed: int, split: str, label: int, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    index = 0
    for chunk in _iter_class(seed, split, label, count, size):
        for img in chunk:
            Image.fromarray(img).save(folder / f"{index:05d}.png", format="PNG")
            index += 1


def _rename_into(tmp: Path, out: Path, marker_text: str) -> None:
    """Rename tmp to OUT (absent or an empty directory) in one atomic step."""
    try:
        os.replace(tmp, out)
    except OSError as err:
        # Parallel runs of a study may generate the same data.root at once. Files are a pure
        # function of the marker's parameters, so an identical marker means an identical dataset.
        marker = out / MARKER
        if marker.is_file() and marker.read_text() == marker_text:
            return
        raise VitreduceError(f"{out} was filled by something else while the dataset was written ({err})") from err


def _check_target(out: Path, overwrite: bool) -> bool:
    """Refuse a target holding anything this tool did not write; True if an old dataset gets replaced."""
    if out.exists() and not out.is_dir():
        raise VitreduceError(f"{out} exists and is not a directory; choose another output path")
    if not out.exists() or not any(out.iterdir()):
        return False
    if not overwrite:
        raise VitreduceError(f"{out} exists and is not empty; choose a new directory or pass --overwrite")
    marker_path = out / MARKER
    if not marker_path.is_file():
        raise VitreduceError(
            f"{out} is not empty and has no {MARKER}, so it was not written by `vitreduce data synth`; "
            "--overwrite only replaces such datasets: choose a new directory"
        )
    try:
        old_classes = set(json.loads(marker_path.read_text())["classes"])
    except (ValueError, KeyError, TypeError) as err:
        raise VitreduceError(f"{marker_path} is unreadable ({err}); remove {out} yourself") from err
    # Never delete what we did not write: every file under train/ and val/ must be one of our images.
    for split in SPLITS:
        for path in (out / split).rglob("*") if (out / split).is_dir() else ():
            rel = path.relative_to(out / split)
            ours = rel.parts[0] in old_classes and (
                path.is_dir() if len(rel.parts) == 1 else len(rel.parts) == 2 and path.suffix == ".png"
            )
            if not ours:
                raise VitreduceError(f"{path} was not written by `vitreduce data synth`; move it out of {out}")
    return True


def _swap_in(new: Path, out: Path) -> None:
    """Replace OUT's marker, train/ and val/ with those in `new`; the marker goes first and comes back last."""
    (out / MARKER).unlink()
    trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    try:
        for split in SPLITS:
            if (out / split).exists():
                os.replace(out / split, trash / split)
            os.replace(new / split, out / split)
        os.replace(new / MARKER, out / MARKER)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


class SynthConfig(BaseModel):
    """The ``synth:`` section of a train config: generate data.root with this module when it does not exist."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0)
    classes: int = Field(10, ge=2)
    train_per_class: int = Field(500, ge=1)
    val_per_class: int = Field(100, ge=1)
    size: int = Field(32, ge=8)


def ensure_synth(root: Path, synth: SynthConfig) -> None:
    """Generate the built-in dataset at ``root`` if missing; refuse one generated with other settings."""
    wanted = kwargs_from(synth, "seed", "classes", "size", "train_per_class", "val_per_class")
    if not root.exists():
        print(f"data.root {root} does not exist: generating the built-in dataset there ({synth})")
        write_synth_dataset(root, **wanted)
        return
    if (root / MARKER).is_file():
        marker = json.loads((root / MARKER).read_text())
        found = {**{k: marker.get(k) for k in wanted}, "classes": len(marker.get("classes", []))}
        if found != wanted:
            raise VitreduceError(f"data.root {root} holds a synthetic dataset made with {found}, the config's synth "
                                 f"section asks for {wanted}: delete that folder or point data.root elsewhere")
