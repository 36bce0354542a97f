"""
The rules for ``ParallelDQN``'s arguments, written once: the constructor checks its arguments with them, and the zoo
layer checks config files with the same converters (adding the file, entry and key to the message). A bad value
fails with a :class:`ConfigError` naming the argument, before anything is built, rather than somewhere in training.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces


class ConfigError(ValueError):
    """
    A hyperparameter file, entry or value that cannot be used.

    The message names the file, the entry (section) and the key whenever they are known, so that the user can
    go straight to the offending line. They are also kept as attributes for programmatic use.

    :param reason: what is wrong, without the location
    :param file: the YAML file, if known
    :param entry: the entry (section) of the file, e.g. ``CartPole-v1``, if known
    :param key: the hyperparameter, if known
    """

    def __init__(
        self, reason: str, file: str | os.PathLike[str] | None = None, entry: str | None = None, key: str | None = None
    ) -> None:
        self.reason = reason
        self.file = None if file is None else str(file)
        self.entry = entry
        self.key = key
        where = [f"file {self.file}"] if self.file is not None else []
        where += [f"entry '{entry}'"] if entry is not None else []
        where += [f"key '{key}'"] if key is not None else []
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through ``self.args`` (the formatted message) by default, which would not round-trip
        # through this constructor; ranks and subprocess workers may need to ship the error back.
        return (type(self), (self.reason, self.file, self.entry, self.key))


class ConfigAssertionError(ConfigError, AssertionError):
    """
    A :class:`ConfigError` for a value that SB3 itself refuses with an assertion (``train_freq=0``: SB3 asserts at the
    first rollout), so that code written for SB3 that catches ``AssertionError`` catches this too.
    """


class UnsupportedSpaceError(ValueError, AssertionError):
    """
    The env's action space is not one DQN can act in (``Discrete``). SB3 refuses one with an ``AssertionError``
    (``assert isinstance(action_space, supported)``), which code written for SB3 catches: this is one too.
    """


def check_action_space(action_space: spaces.Space, env_name: str = "this env") -> None:
    """DQN chooses among discrete actions: refuse any other action space with a message that says what to use."""
    if not isinstance(action_space, spaces.Discrete):
        raise UnsupportedSpaceError(
            f"DQN chooses among discrete actions, but the action space of {env_name} is {action_space}: use an env with "
            "a Discrete action space (or an algorithm for continuous actions, such as SAC or TD3)"
        )


# --- conversion of single values; each raises ConfigError(reason) and the caller adds file/entry/key ---------


def number(value: Any, allow_inf: bool = False) -> float:
    """
    A finite real number (or, with ``allow_inf``, also an infinite one), also a NumPy scalar as SB3 takes them
    (``np.int64(32)``, ``np.float32(0.99)``); booleans (an ``int`` subclass) and strings are refused.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        hint = ""
        if isinstance(value, str):
            # PyYAML follows YAML 1.1, where ``1e5`` (no dot) is a string: the zoo writes ``!!float 1e5``.
            hint = "; write numbers in scientific notation as !!float 1e5"
        raise ConfigError(f"expected a number, got {type(value).__name__} {value!r}{hint}")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ConfigError(f"expected a finite number, got {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def integer(value: Any) -> int:
    """An ``int``, also from a float with an integral value (``!!float 1e5``)."""
    result = number(value)
    if isinstance(result, float):
        if not result.is_integer():
            raise ConfigError(f"expected an integer, got {value!r}")
        return int(result)
    return result


def int_at_least(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        result = integer(value)
        if result < minimum:
            raise ConfigError(f"must be >= {minimum}, got {result}")
        return result

    return convert


def float_in(check: Callable[[float], bool], bounds: str, allow_inf: bool = False) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        result = float(number(value, allow_inf))
        if not check(result):
            raise ConfigError(f"must satisfy {bounds}, got {result!r}")
        return result

    return convert


def probability(key: str) -> Callable[[Any], float]:
    return float_in(lambda v: 0 <= v <= 1, f"0 <= {key} <= 1")


def of_type(*types: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise ConfigError(f"expected {expected}, got {type(value).__name__} {value!r}")
        return value

    return convert


def flag(value: Any) -> bool:
    """A boolean, also NumPy's (``np.bool_``); numbers and strings are refused."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"expected bool, got {type(value).__name__} {value!r}")
    return bool(value)


def gradient_steps(value: Any) -> int:
    """As SB3: 0 collects without training (a way to fill the buffer), -1 as many steps as collected transitions."""
    result = integer(value)
    if result < -1:
        raise ConfigError(f"must be >= 0, or -1 for as many steps as collected transitions, got {result}")
    return result


def _frequency(value: Any) -> int:
    result = integer(value)
    if result < 1:
        # SB3 asserts "Should at least collect one step or episode." at the first rollout
        raise ConfigAssertionError(f"must be >= 1 (at least one step or episode per rollout), got {result}")
    return result


def train_freq(value: Any) -> int | tuple[int, str]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[1] not in ("step", "episode"):
            raise ConfigError(f"expected an integer or [<frequency>, 'step' | 'episode'], got {value!r}")
        return (_frequency(value[0]), value[1])
    return _frequency(value)


def learning_rate(value: Any) -> float | Callable[[float], float]:
    """
    A number >= 0 (0, as in SB3 and torch's Adam, leaves the weights as they are), or a schedule (a callable of the
    remaining progress, which is not checked).
    """
    return value if callable(value) else float_in(lambda v: v >= 0, "learning_rate >= 0")(value)


#: The rule of each checked constructor argument of ``ParallelDQN`` (the zoo adds the keys of its config files).
ARGUMENT_RULES: dict[str, Callable[[Any], Any]] = {
    "learning_rate": learning_rate,
    "buffer_size": int_at_least(1),
    "learning_starts": int_at_least(0),
    "batch_size": int_at_least(1),
    "tau": float_in(lambda v: 0 <= v <= 1, "0 <= tau <= 1"),  # SB3's range; 0 never moves the target network
    "gamma": probability("gamma"),
    "train_freq": train_freq,
    "gradient_steps": gradient_steps,
    "target_update_interval": int_at_least(1),
    "exploration_fraction": probability("exploration_fraction"),
    "exploration_initial_eps": probability("exploration_initial_eps"),
    "exploration_final_eps": probability("exploration_final_eps"),
    # As torch's clip_grad_norm_ (SB3's): inf never clips, 0 zeroes the gradients; a negative one would flip them
    "max_grad_norm": float_in(lambda v: v >= 0, "max_grad_norm >= 0", allow_inf=True),
    "n_steps": int_at_least(1),
    "double_q": flag,
    "optimize_memory_usage": flag,
    "stats_window_size": int_at_least(1),
    "sync_check_interval": int_at_least(0),
    "n_envs": int_at_least(1),
    "model_parallel_size": int_at_least(1),
    "shard_optimizer": flag,
}


def check_model_kwargs(**kwargs: Any) -> None:
    """
    Check constructor arguments of ``ParallelDQN`` by :data:`ARGUMENT_RULES`, the rules config files are checked
    with, so that the Python API refuses ``batch_size=0`` or ``exploration_final_eps=1.5`` with a :class:`ConfigError`
    naming the argument. Arguments without a rule are not checked.

    :raises ConfigError: for the first value of the wrong type or out of range
    """
    for key, value in kwargs.items():
        if key in ARGUMENT_RULES:
            try:
                ARGUMENT_RULES[key](value)
            except ConfigError as err:
                raise type(err)(err.reason, key=key) from None
