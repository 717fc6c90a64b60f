"""The ``statistics:`` section of a study spec and its defaults: read with the spec, so it imports no scipy (a
study's dry run and status start at once); ``family`` computes with them."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Correction = Literal["holm", "bh"]
# The segmentation probe's mIoU (analysis.segmentation) of the model the analysis probed (analysis.weights): its
# model kind is the probe's, not a choice here, and only a study that probes its runs can name it.
PROBE_MIOU = "probe_miou"
PRIMARY_CHOICES = ("ema_top1_final", "raw_top1_final", "ema_p2f", "raw_p2f", PROBE_MIOU)
DEFAULT_CORRECTION: Correction = "holm"
DEFAULT_EFFECT = 0.42  # pp: the paper's ViT-B/16 grouped-vs-baseline top-1 gain, the effect a study should see
DEFAULT_MARGIN = 1.0  # pp of top-1: the non-inferiority margin of the degree statement unless the spec states one


class StatisticsConfig(BaseModel):
    """The ``statistics:`` section of a study spec (every key optional; vitreduce report flags override)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # <kind>_<metric>, or probe_miou; default: ema_top1_final when every comparison has an EMA model, else
    # raw_top1_final
    primary: Literal["ema_top1_final", "raw_top1_final", "ema_p2f", "raw_p2f", "probe_miou"] | None = None
    correction: Correction = DEFAULT_CORRECTION  # holm: family-wise error rate; bh: false discovery rate
    alpha: float = Field(0.05, gt=0, lt=1)  # significance level of every family
    effect: float = Field(DEFAULT_EFFECT, gt=0)  # pp of the primary metric: the effect whose seeds-needed is stated
    # pp: the smallest difference of interest; a significant difference below it (or below one test image,
    # whichever is larger) is called negligible, neither better nor worse
    min_effect: float = Field(0.0, ge=0)
    # pp: how far below the baseline a reduced degree may be and still be called non-inferior (degree statement)
    margin: float = Field(DEFAULT_MARGIN, gt=0)
