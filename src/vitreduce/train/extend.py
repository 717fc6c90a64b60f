"""Extending a run to more epochs (``vitreduce train ... --set epochs=N --extend``, docs/training.md).

The continuation follows the schedule the config now defines: timm's schedule built for N epochs (for
the cosine, ``t_initial=N``), entered at the epoch the run reached. Epochs 1..old were trained under the
old schedule, so the extended run is not a run trained for N epochs from the start: with the cosine the
learning rate, already decayed to the old end's value, rises again to the N-epoch schedule's value at
epoch old+1 and decays to ``min_lr`` by epoch N. ``note`` says so with the numbers; ``follow_config``
makes the resumed scheduler the new one (a checkpoint stores the old one).
"""
from __future__ import annotations

import json
from typing import Any

import torch

from vitreduce.train.config import TrainConfig
from vitreduce.train.optim import create_scheduler


def follow_config(scheduler: Any, built: dict[str, Any], epochs_done: int, step: int) -> bool:
    """Put back the schedule this config defines when the checkpoint held another (an extension's).

    Args:
        scheduler: the timm scheduler, just loaded from a checkpoint.
        built: its ``state_dict()`` as built from this config, before the checkpoint was loaded.
        epochs_done, step: the loaded position; the learning rate is set for it as the loop would have.
    Returns:
        whether the schedule was replaced (never on a plain resume: the same config builds the same one).
    """
    if _plain(scheduler.state_dict()) == _plain(built):
        return False
    scheduler.load_state_dict(built)
    scheduler.step(epochs_done)  # per-epoch schedules: the epoch in progress
    scheduler.step_update(num_updates=step)  # per-update schedules: the next update
    return True


def _plain(state: dict[str, Any]) -> Any:
    """A scheduler state as the checkpoint's JSON holds it (tuples become lists)."""
    return json.loads(json.dumps(state, default=str))


def lr_at(config: TrainConfig, epochs: int, epoch: int) -> float:
    """The learning rate timm's schedule of ``epochs`` epochs gives epoch ``epoch`` (from 0) at its start."""
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.optimizer.lr)
    scheduler = create_scheduler(probe, config.schedule.model_copy(update={"on_updates": False}), epochs, 1)
    scheduler.step(epoch)
    return probe.param_groups[0]["lr"]


def note(config: TrainConfig, before: int) -> str:
    """What an extension from ``before`` epochs to ``config.epochs`` does to the learning-rate schedule."""
    after, name = config.epochs, config.schedule.name
    return (
        f"extending the run from {before} to {after} epochs: epochs {before + 1}-{after} follow timm's {name} "
        f"schedule built for {after} epochs (as with epochs: {after} from the start), entered at epoch {before + 1} "
        f"with lr {lr_at(config, after, before):.4g}. Epochs 1-{before} keep the {before}-epoch schedule they were "
        f"trained with (the last at lr {lr_at(config, before, before - 1):.4g}, where a {after}-epoch run is at "
        f"{lr_at(config, after, before - 1):.4g}), so the result differs from a run trained for {after} epochs from "
        "the start; train one with another --out to compare."
    )
