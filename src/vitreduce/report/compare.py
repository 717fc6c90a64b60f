"""A variant against the baseline, read from the run directories: the seed-level tests of the runs paired by
seed, and the image-level tests of their predictions.csv (vitreduce.statistics.paired computes every test)."""
from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitreduce.errors import VitreduceError
from vitreduce.report.runs import MODEL_KINDS, ModelKind, RunMetrics
from vitreduce.statistics.paired import (
    DEFAULT_ALPHA,
    DEFAULT_BOOTSTRAP_SEED,
    DEFAULT_RESAMPLES,
    Comparison,
    KindComparison,
    PairedTest,
    clustered_mcnemar,
    mcnemar_exact,
    paired_bootstrap_ci,
    paired_ttest,
)


@dataclass(frozen=True)
class Predictions:
    """predictions.csv of a run: per eval image, its label and the raw / EMA models' top-1 class."""

    index: np.ndarray  # (N,) int
    label: np.ndarray  # (N,) int
    raw: np.ndarray  # (N,) int
    ema: np.ndarray | None  # (N,) int, None when the run has no EMA

    def correct(self, kind: ModelKind) -> np.ndarray | None:
        pred = self.raw if kind == "raw" else self.ema
        return None if pred is None else pred == self.label


def read_predictions(path: Path | str) -> Predictions:
    path = Path(path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][:4] != ["index", "label", "raw", "ema"]:
        raise VitreduceError(f"{path} must start with the header index,label,raw,ema")
    body = [r for r in rows[1:] if r]
    try:
        cols = [np.array([int(r[j]) for r in body], dtype=np.int64) for j in range(3)]
        ema_cells = [r[3] if len(r) > 3 else "" for r in body]
        ema = np.array([int(c) for c in ema_cells], dtype=np.int64) if body and all(ema_cells) else None
    except (ValueError, IndexError) as err:
        raise VitreduceError(f"{path} has a malformed row ({err}); rewrite it with `vitreduce eval`") from err
    if ema is None and any(ema_cells):
        raise VitreduceError(f"{path}: the ema column is filled on some rows only")
    order = np.argsort(cols[0], kind="stable")
    return Predictions(cols[0][order], cols[1][order], cols[2][order], None if ema is None else ema[order])


def _pair(base: Predictions, variant: Predictions, kind: ModelKind, where: str) -> tuple[np.ndarray, np.ndarray] | None:
    a, b = base.correct(kind), variant.correct(kind)
    if a is None or b is None:
        return None
    if not np.array_equal(base.index, variant.index) or not np.array_equal(base.label, variant.label):
        raise VitreduceError(f"{where}: baseline and variant predictions are not on the same eval images "
                             "(index or label columns differ); evaluate both on the same split")
    return a, b


def _paired_test(label: str, a: np.ndarray, b: np.ndarray, *, n_resamples: int, seed: int,
                 alpha: float) -> PairedTest:
    return PairedTest(label, float(a.mean() * 100), float(b.mean() * 100),
                      paired_bootstrap_ci(a, b, n_resamples=n_resamples, seed=seed, confidence=1 - alpha),
                      mcnemar_exact(a, b) if a.ndim == 1 else clustered_mcnemar(a, b))


def compare_to_baseline(variant: str, variant_runs: Sequence[RunMetrics], baseline: str,
                        baseline_runs: Sequence[RunMetrics], *, alpha: float = DEFAULT_ALPHA,
                        n_resamples: int = DEFAULT_RESAMPLES,
                        seed: int = DEFAULT_BOOTSTRAP_SEED) -> Comparison:
    """All tests of `variant` against `baseline`, runs paired by seed, for the raw and the EMA model."""
    if not 0 < alpha < 1:
        raise VitreduceError(f"alpha must be in (0, 1), got {alpha}")
    base_by_seed = {r.seed: r for r in baseline_runs}
    pairs = [(base_by_seed[r.seed], r) for r in variant_runs if r.seed in base_by_seed]
    preds, missing = _read_pairs(pairs)
    test = functools.partial(_paired_test, n_resamples=n_resamples, seed=seed, alpha=alpha)
    kinds = {}
    for kind in MODEL_KINDS:
        kept = [(b.model(kind), v.model(kind)) for b, v in pairs]
        kept = [(b, v) for b, v in kept if b is not None and v is not None]
        if kind == "ema" and not kept:
            continue  # no EMA on one side: nothing to compare
        notes = [f"no predictions.csv for seed(s) {missing}: no per-image tests there"] if missing else []
        per_seed, outcomes = [], []
        for s, (pb, pv) in preds.items():
            paired = _pair(pb, pv, kind, f"{variant} vs {baseline}, seed {s}")
            if paired is not None:
                outcomes.append((*paired, pb.index))
                per_seed.append(test(f"seed {s}", *paired))
        pooled = _pooled(outcomes, notes, test) if len(outcomes) > 1 else None
        kinds[kind] = KindComparison(
            kind=kind,
            top1=paired_ttest([b.top1_final for b, _ in kept], [v.top1_final for _, v in kept], confidence=1 - alpha),
            p2f=paired_ttest([b.p2f for b, _ in kept], [v.p2f for _, v in kept], confidence=1 - alpha),
            per_seed=per_seed, pooled=pooled, notes=notes,
        )
    return Comparison(variant, baseline, alpha, [v.seed for _, v in pairs], kinds)


def _read_pairs(pairs: list[tuple[RunMetrics, RunMetrics]]) -> tuple[dict[int, tuple[Predictions, Predictions]],
                                                                      list[int]]:
    """The (baseline, variant) predictions of each seed that has both, and the seeds that do not."""
    preds: dict[int, tuple[Predictions, Predictions]] = {}
    missing = []
    for base, var in pairs:
        paths = base.run_dir / "predictions.csv", var.run_dir / "predictions.csv"
        if all(p.is_file() for p in paths):
            preds[var.seed] = read_predictions(paths[0]), read_predictions(paths[1])
        else:
            missing.append(var.seed)
    return preds, missing


def _pooled(outcomes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], notes: list[str], test) -> PairedTest | None:
    """The image-level tests over every seed's (baseline, variant, image index) outcomes; says how in ``notes``."""
    if not all(np.array_equal(o[2], outcomes[0][2]) for o in outcomes):
        notes.append(f"no pooled image-level test: the {len(outcomes)} seeds were not scored on the same images, "
                     "so their outcomes cannot be grouped by image")
        return None
    # (N, S): both tests take the image as the unit, carrying every seed's outcome on an image together.
    a, b = np.stack([o[0] for o in outcomes], 1), np.stack([o[1] for o in outcomes], 1)
    notes.append(f"pooled: the {len(outcomes)} seeds' outcomes grouped by image (the same images are scored in "
                 "every seed); the cluster bootstrap resamples images and the clustered McNemar test takes "
                 "images as clusters. Both describe these trained models on this test set, not retraining")
    return test(f"pooled ({len(outcomes)} seeds)", a, b)
