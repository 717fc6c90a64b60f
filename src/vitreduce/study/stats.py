"""Statistics of a variant against the baseline: paired t-test over seeds, and per-image paired tests
(bootstrap CI of the top-1 difference, McNemar's exact test) on the final models' predictions.

Differences are always variant minus baseline, in percentage points. The wording of every verdict comes
from the computed p-value or interval (the `verdict_*` helpers), never from the size of a difference.
"""
from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as sps

from vitreduce.errors import VitreduceError
from vitreduce.study.runs import MODEL_KINDS, ModelKind, RunMetrics

DEFAULT_ALPHA = 0.05
DEFAULT_RESAMPLES = 2000
DEFAULT_BOOTSTRAP_SEED = 0
MIN_SEEDS = 3  # below this the t-test line carries a warning


def fmt_p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}"


# ---------------------------------------------------------------------------------------------------
# Paired t-test over seeds


@dataclass(frozen=True)
class TTest:
    """Paired t-test of per-seed values (variant minus baseline); t and p are None where undefined."""

    n: int
    df: int | None
    mean_diff: float | None
    t: float | None
    p: float | None
    warning: str | None


def paired_ttest(baseline: Sequence[float], variant: Sequence[float]) -> TTest:
    """Two-sided paired t-test; `baseline[i]` and `variant[i]` are the same seed's values."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(variant, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two equal-length 1-D sequences, got {a.shape} and {b.shape}")
    n = a.size
    d = b - a
    mean = float(d.mean()) if n else None
    if n < 2:
        return TTest(n, None, mean, None, None, f"n={n} paired seed(s): a t-test needs at least 2")
    warning = (f"only n={n} paired seeds (df={n - 1}): almost no power and normality cannot be checked, "
               "weak evidence whatever the p-value") if n < MIN_SEEDS else None
    if d.std(ddof=1) <= 1e-9 * max(1.0, abs(mean)):
        # Identical differences make t infinite (scipy then says p=0): the test is undefined, not significant.
        note = "the differences are identical across seeds, so t is undefined"
        return TTest(n, n - 1, mean, None, None, f"{warning}; {note}" if warning else note)
    res = sps.ttest_rel(b, a)
    return TTest(n, n - 1, mean, float(res.statistic), float(res.pvalue), warning)


def verdict_ttest(t: TTest, alpha: float = DEFAULT_ALPHA) -> str:
    if t.p is None:
        return f"not testable ({t.warning})"
    word = f"significant at alpha={alpha:g}" if t.p < alpha else "not significant"
    text = f"{word} (paired t-test p={fmt_p(t.p)}, t={t.t:.3g}, df={t.df})"
    return f"{text}; warning: {t.warning}" if t.warning else text


# ---------------------------------------------------------------------------------------------------
# Per-image paired tests


@dataclass(frozen=True)
class Bootstrap:
    """Percentile bootstrap interval of the top-1 difference (variant minus baseline, pp)."""

    diff: float
    low: float
    high: float
    confidence: float
    n_images: int
    n_resamples: int
    seed: int


def paired_bootstrap_ci(correct_base: np.ndarray, correct_variant: np.ndarray, *,
                        n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_BOOTSTRAP_SEED,
                        confidence: float = 1 - DEFAULT_ALPHA) -> Bootstrap:
    """Paired bootstrap over images of the difference in top-1.

    `correct_*` are booleans of shape (N,) or (N, S): row i is image i, columns are seeds scored on
    the same image. A resample draws N rows with replacement, keeping a row's seeds together. The
    statistic depends on a row only through e_i = sum_s (variant_is - base_is), so a resample is a
    multinomial draw of how often each distinct e value occurs: exact, and O(n_resamples) memory.
    """
    a = np.asarray(correct_base, dtype=bool)
    b = np.asarray(correct_variant, dtype=bool)
    if a.shape != b.shape or a.ndim not in (1, 2) or a.shape[0] == 0:
        raise ValueError(f"need two equal non-empty (N,) or (N, S) arrays, got {a.shape} and {b.shape}")
    if n_resamples < 1 or not 0 < confidence < 1:
        raise VitreduceError(f"need n_resamples >= 1 and 0 < confidence < 1, got {n_resamples}, {confidence}")
    e = (b.astype(np.int64) - a.astype(np.int64)).reshape(a.shape[0], -1).sum(axis=1)  # (N,)
    n_rows, per_row = a.shape[0], a.size // a.shape[0]
    values, counts = np.unique(e, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_rows, counts / n_rows, size=n_resamples)  # (R, K)
    diffs = draws @ values * (100.0 / a.size)  # (R,) pp
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return Bootstrap(diff=float(e.sum() * 100.0 / a.size), low=float(low), high=float(high),
                     confidence=confidence, n_images=n_rows * per_row, n_resamples=n_resamples, seed=seed)


def verdict_bootstrap(bs: Bootstrap) -> str:
    ci = f"{bs.confidence:.0%} CI [{bs.low:+.2f}, {bs.high:+.2f}] pp"
    alpha = 1 - bs.confidence
    if bs.low > 0 or bs.high < 0:
        return f"significant at alpha={alpha:.2g} ({ci} excludes 0)"
    return f"not significant ({ci} includes 0)"


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test: a two-sided binomial test (p=1/2) on the discordant pairs."""

    n_pairs: int
    base_only: int  # baseline right, variant wrong
    variant_only: int  # variant right, baseline wrong
    p: float


def mcnemar_exact(correct_base: np.ndarray, correct_variant: np.ndarray) -> McNemar:
    a = np.asarray(correct_base, dtype=bool).ravel()
    b = np.asarray(correct_variant, dtype=bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in size: {a.size} and {b.size}")
    base_only, variant_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    discordant = base_only + variant_only
    p = 1.0 if discordant == 0 else float(sps.binomtest(variant_only, discordant, 0.5).pvalue)
    return McNemar(int(a.size), base_only, variant_only, min(1.0, p))


def verdict_mcnemar(m: McNemar, alpha: float = DEFAULT_ALPHA) -> str:
    word = f"significant at alpha={alpha:g}" if m.p < alpha else "not significant"
    return f"{word} (McNemar p={fmt_p(m.p)})"


# ---------------------------------------------------------------------------------------------------
# Predictions and the comparison of a variant with the baseline


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


@dataclass(frozen=True)
class PairedTest:
    """Per-image tests of one seed (or pooled over seeds) for one model kind."""

    label: str  # "seed 0" or "pooled (2 seeds)"
    top1_base: float
    top1_variant: float
    bootstrap: Bootstrap
    mcnemar: McNemar


@dataclass(frozen=True)
class KindComparison:
    kind: ModelKind
    top1: TTest  # paired t-test of final top-1 over seeds
    p2f: TTest  # paired t-test of peak-to-final over seeds
    per_seed: list[PairedTest] = field(default_factory=list)
    pooled: PairedTest | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Comparison:
    variant: str
    baseline: str
    alpha: float
    seeds: list[int]  # seeds finished in both
    kinds: dict[ModelKind, KindComparison]  # "raw", and "ema" where both have an EMA


def _paired_test(label: str, a: np.ndarray, b: np.ndarray, *, n_resamples: int, seed: int,
                 alpha: float) -> PairedTest:
    return PairedTest(label, float(a.mean() * 100), float(b.mean() * 100),
                      paired_bootstrap_ci(a, b, n_resamples=n_resamples, seed=seed, confidence=1 - alpha),
                      mcnemar_exact(a, b))


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
            top1=paired_ttest([b.top1_final for b, _ in kept], [v.top1_final for _, v in kept]),
            p2f=paired_ttest([b.p2f for b, _ in kept], [v.p2f for _, v in kept]),
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


def _pooled(outcomes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], notes: list[str], test) -> PairedTest:
    """The per-image tests over every seed's (baseline, variant, image index) outcomes; says how in ``notes``."""
    if all(np.array_equal(o[2], outcomes[0][2]) for o in outcomes):
        # (N, S): the bootstrap resamples images, keeping every seed's outcome on an image together.
        a, b = np.stack([o[0] for o in outcomes], 1), np.stack([o[1] for o in outcomes], 1)
        notes.append(f"pooled: the {len(outcomes)} seeds' paired outcomes concatenated; the bootstrap "
                     "resamples images with all seeds' outcomes on an image together, McNemar treats "
                     "every (image, seed) pair as independent, which overstates its evidence")
    else:
        a, b = np.concatenate([o[0] for o in outcomes]), np.concatenate([o[1] for o in outcomes])
        notes.append(f"pooled: the {len(outcomes)} seeds' paired outcomes concatenated (the seeds were not "
                     "scored on the same images, so every (image, seed) pair is treated as independent)")
    return test(f"pooled ({len(outcomes)} seeds)", a, b)
