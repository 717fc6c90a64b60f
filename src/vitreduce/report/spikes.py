"""Loss spikes of a run: epochs whose train loss jumps, and logged steps whose loss is an outlier (docs/metrics.md)."""
from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence

from vitreduce.errors import VitreduceError

DEFAULT_SPIKE_THRESHOLD = 0.10  # an epoch's train loss more than 10% above the reference minimum
DEFAULT_SPIKE_WINDOW = 5  # reference = minimum over the previous 5 logged epochs
DEFAULT_STEP_SPIKE_WINDOW = 50  # a logged step's reference: the previous 50 finite logged losses
DEFAULT_STEP_SPIKE_Z = 7.0  # a step spike: more than 7 robust standard deviations above their median
MAD_TO_SD = 1.4826  # the median absolute deviation times this estimates a normal distribution's sd


def find_loss_spikes(epochs: Sequence[int], losses: Sequence[float | None], *,
                     window: int = DEFAULT_SPIKE_WINDOW, threshold: float = DEFAULT_SPIKE_THRESHOLD) -> list[int]:
    """Epochs whose train loss is a spike (docs/metrics.md).

    An epoch is a spike when its loss is not finite, or exceeds (1 + threshold) times the minimum finite
    loss of the previous `window` logged epochs. The first epoch has no reference and is only a spike
    when not finite. Epochs without a loss (None) are skipped and are no reference.
    """
    if window < 1:
        raise VitreduceError(f"spike window must be >= 1 epoch, got {window}")
    if threshold < 0:
        raise VitreduceError(f"spike threshold must be >= 0 (a relative increase), got {threshold}")
    spikes = []
    for i, (epoch, loss) in enumerate(zip(epochs, losses, strict=True)):
        if loss is None:
            continue
        if not math.isfinite(loss):
            spikes.append(epoch)
            continue
        previous = [x for x in losses[max(0, i - window):i] if x is not None and math.isfinite(x)]
        if previous and loss > (1.0 + threshold) * min(previous):
            spikes.append(epoch)
    return spikes


def find_step_spikes(steps: Sequence[int], losses: Sequence[float | None], *,
                     window: int = DEFAULT_STEP_SPIKE_WINDOW, z: float = DEFAULT_STEP_SPIKE_Z) -> list[int]:
    """Logged steps whose loss is a spike (docs/metrics.md).

    A step is a spike when its loss is not finite (None), or exceeds the median m of the previous
    `window` finite logged losses by more than `z` x 1.4826 x their median absolute deviation (a robust
    z-score, one-sided). A step is judged once `window` finite losses precede it; spikes stay in the
    reference, which the median and the MAD barely notice.
    """
    if window < 1:
        raise VitreduceError(f"step spike window must be >= 1 logged step, got {window}")
    if not z >= 0:
        raise VitreduceError(f"step spike z must be >= 0 (robust standard deviations), got {z}")
    spikes = []
    reference: deque[float] = deque(maxlen=window)
    for step, loss in zip(steps, losses, strict=True):
        if loss is None or not math.isfinite(loss):
            spikes.append(step)
            continue
        if len(reference) == window:
            median = statistics.median(reference)
            scale = MAD_TO_SD * statistics.median(abs(x - median) for x in reference)
            if loss > median + z * scale:
                spikes.append(step)
        reference.append(loss)
    return spikes
