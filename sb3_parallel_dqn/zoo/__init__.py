"""
The rl-baselines3-zoo workflow, on top of the core (which never imports this package): zoo-format YAML configs
(``hyperparams``, ``configs/dqn.yml``), envs and wrappers from a config entry (``envs``), run folders (``run_folder``),
the callbacks of a run (``callbacks``), what ``train``, ``evaluate``, ``plot`` and ``benchmark`` do (``experiment``,
``evaluation``, ``plotting``, ``benchmark``), weights-only loading from a config (``weights``), and ParallelDQN as an
algorithm of rl_zoo3's own scripts (``rl_zoo``; ``python -m sb3_parallel_dqn.zoo``).
"""

from typing import Any

#: The algorithm's name in run folders (``<log folder>/parallel_dqn/<env>_<id>``) and in rl_zoo3.
ALGO = "parallel_dqn"


def register() -> None:
    """Register ``ParallelDQN`` as rl_zoo3's algorithm ``parallel_dqn`` (:func:`sb3_parallel_dqn.zoo.rl_zoo.register`)."""
    from sb3_parallel_dqn.zoo.rl_zoo import register as register_with_rl_zoo3

    register_with_rl_zoo3()


def main(argv: list[str] | None = None) -> int:
    """rl_zoo3's ``train`` with ``parallel_dqn`` registered (see :func:`sb3_parallel_dqn.zoo.rl_zoo.main`)."""
    from sb3_parallel_dqn.zoo.rl_zoo import main as rl_zoo_main

    return rl_zoo_main(argv)


def load_weights_only_from_config(*args: Any, **kwargs: Any) -> Any:
    """See :func:`sb3_parallel_dqn.zoo.weights.load_weights_only_from_config`."""
    from sb3_parallel_dqn.zoo.weights import load_weights_only_from_config as load

    return load(*args, **kwargs)
