"""
Hyperparameters as functions of the number of data-parallel ranks: one rule, one option (``scaling``).

``ParallelDQN`` reads ``batch_size``, ``train_freq`` and ``gradient_steps`` per rank (see its docstring). Values tuned
for D0 data-parallel ranks (``tuned_world_size``; SB3's and the zoo's own values: 1) therefore mean, on D ranks, a
global batch D / D0 times larger and D / D0 times fewer sequential updates per global env step. That is cheap in
wall-clock time and costly in sample efficiency. With ``kappa = D / D0``, :func:`scale_to_world` gives:

- ``"none"``: the values as given (weak scaling: each rank does the tuned per-rank work);
- ``"sqrt"``: learning rate and gradient steps per rollout times ``sqrt(kappa)``, the batch per rank unchanged: the
  global batch grows ``kappa`` times and the sequential updates per env step shrink only ``sqrt(kappa)`` times. The
  learning rate follows the square-root rule for a ``kappa`` times larger batch under Adam (Malladi et al. 2022,
  https://arxiv.org/abs/2205.10287; Krizhevsky 2014, https://arxiv.org/abs/1404.5997). Measured from 2 to 8 ranks
  (docs/benchmarks/scaling.rst): steps to a stable solve 1.25x (CartPole) and 1.5x (Acrobot) those at 2 ranks,
  where ``none`` needs 2.25x or stops solving. The learning rate alone did not hold them: the extra updates are
  needed;
- ``"strong"``: strong scaling, the tuned global batch split over the ranks (``batch_size * D0 / D`` per rank) and the
  tuned number of updates per env step (``train_freq * D0 / D`` per rank, or ``gradient_steps * D / D0`` where that
  does not divide), so the learning dynamics are those of D0 ranks at any D. It pays where the update is
  compute-bound (pixels, wide nets): each rank's share of an update shrinks with D.

Global quantities (``learning_starts``, ``target_update_interval``, the exploration schedule, the budget) count global
env steps and need no rule. The rule is applied once, when the model is built: ``load()`` keeps a model's values
(``_setup_model()`` runs again there, so nothing may be rescaled in it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

SCALING_MODES = ("none", "sqrt", "strong")

# SB3 DQN's defaults, for the keys a rule reads when the hyperparameters leave them out
_DEFAULTS: dict[str, Any] = {"learning_rate": 1e-4, "batch_size": 32, "train_freq": 4, "gradient_steps": 1}


def scale_to_world(
    hyperparams: dict[str, Any], mode: str, world_size: int | None = None, tuned_world_size: int = 1
) -> dict[str, Any]:
    """
    ``hyperparams`` (``ParallelDQN`` keyword arguments) for ``world_size`` data-parallel ranks under the rule ``mode``
    (see the module docstring); a new dict, ``hyperparams`` is not changed.

    :param hyperparams: keyword arguments tuned for ``tuned_world_size`` data-parallel ranks
    :param mode: one of :data:`SCALING_MODES`
    :param world_size: the data-parallel ranks of this job (default: the MPI world size over ``model_parallel_size``)
    :param tuned_world_size: the data-parallel ranks ``hyperparams`` were tuned for
    :raises ValueError: for an unknown mode, or values the rule cannot scale
    """
    if mode not in SCALING_MODES:
        raise ValueError(f"scaling must be one of {', '.join(SCALING_MODES)}, not {mode!r}")
    if world_size is None:
        from sb3_parallel_dqn.distributed import comm  # (imported here: the rule itself needs no MPI)

        world_size = comm.world_size() // int(hyperparams.get("model_parallel_size", 1))
    if world_size < 1 or tuned_world_size < 1:
        raise ValueError(f"world sizes must be >= 1, got world_size={world_size}, tuned_world_size={tuned_world_size}")
    scaled = dict(hyperparams)
    if mode == "none" or world_size == tuned_world_size:
        return scaled
    values = {key: hyperparams.get(key, default) for key, default in _DEFAULTS.items()}
    freq, unit = _train_freq(values["train_freq"])
    if not isinstance(values["gradient_steps"], int) or values["gradient_steps"] < 1:
        raise ValueError(f"scaling {mode!r} needs gradient_steps >= 1, not {values['gradient_steps']!r}")
    kappa = world_size / tuned_world_size
    if mode == "sqrt":
        scaled["learning_rate"] = _times(values["learning_rate"], math.sqrt(kappa))
        scaled["gradient_steps"] = max(1, round(values["gradient_steps"] * math.sqrt(kappa)))
        return scaled
    # strong: the tuned global batch and updates per global env step, on D ranks
    batch = values["batch_size"] * tuned_world_size
    if batch % world_size:
        raise ValueError(
            f"scaling 'strong' splits the global batch of {values['batch_size']} x {tuned_world_size} rank(s) over "
            f"{world_size} ranks: it does not divide; pick a batch_size or a world size that does"
        )
    scaled["batch_size"] = batch // world_size
    if unit == "step" and (freq * tuned_world_size) % world_size == 0:
        scaled["train_freq"] = _with_unit(freq * tuned_world_size // world_size, values["train_freq"])
    elif (values["gradient_steps"] * world_size) % tuned_world_size == 0:
        scaled["gradient_steps"] = values["gradient_steps"] * world_size // tuned_world_size
    else:
        raise ValueError(
            f"scaling 'strong' cannot keep the updates per env step of train_freq={values['train_freq']!r}, "
            f"gradient_steps={values['gradient_steps']} on {tuned_world_size} rank(s) with {world_size} ranks"
        )
    return scaled


def _train_freq(train_freq: Any) -> tuple[int, str]:
    if isinstance(train_freq, int):
        return train_freq, "step"
    freq, unit = train_freq
    return int(freq), str(unit)


def _with_unit(freq: int, like: Any) -> Any:
    return freq if isinstance(like, int) else (freq, like[1])


def _times(learning_rate: float | Callable[[float], float], factor: float) -> float | Callable[[float], float]:
    if not callable(learning_rate):
        return float(learning_rate) * factor

    # A closure, so that a saved model's schedule pickles by value and stock SB3 loads it without this package.
    def scaled_schedule(progress_remaining: float) -> float:
        return learning_rate(progress_remaining) * factor

    return scaled_schedule
