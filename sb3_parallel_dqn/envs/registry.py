"""
Env ids that exist only once a package registers them: ale-py's Atari games (``ALE/...``, ``...NoFrameskip-v4``)
and MinAtar's games (``MinAtar/...``).

gymnasium >= 1.0 dropped entry-point plugins, so those ids are unknown to ``gym.make`` until ``ale_py`` and
``minatar.gym.register_envs()`` have run in *that process*. That includes every ``SubprocVecEnv`` worker started
with ``spawn`` or ``forkserver``, which begins as a fresh interpreter: :func:`register_env_packages` is therefore
called where the envs are made (in the worker), not only where the command line is read.
"""

from __future__ import annotations

import contextlib
import logging

import gymnasium as gym


def register_env_packages(env_id: str | None = None) -> None:
    """
    Register the games of the optional env packages that are installed (``ale-py``, ``minatar``), once per process.

    Without ``env_id`` every installed package registers its games; with one, only the package that ``env_id``
    needs, and only if gymnasium does not know it yet, so that the common case (``CartPole-v1``) imports nothing.
    """
    if env_id is not None and env_id in gym.registry:
        return
    if env_id is None or env_id.startswith("MinAtar/"):
        _register_minatar()
    if env_id is None or env_id not in gym.registry:
        _register_ale()


def _register_ale() -> None:
    try:
        import ale_py
    except ImportError:
        return
    gym.register_envs(ale_py)


def _register_minatar() -> None:
    if "MinAtar/Breakout-v1" in gym.registry:
        return
    # minatar.gym logs a warning at import when seaborn (only used to render) is missing: keep it off the console.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.suppress(ImportError):
            from minatar import gym as minatar_gym

            minatar_gym.register_envs()
    finally:
        logging.disable(previous)
