"""Env ids as file and folder names (free of heavy imports: ``python -m sb3_parallel_dqn.plot`` uses it too)."""


def env_file_name(env_id: str) -> str:
    """
    ``env_id`` as a file or folder name, as rl-baselines3-zoo names them (huggingface_sb3's ``EnvironmentName``):
    ``/`` becomes ``-`` (``MinAtar/Breakout-v1`` -> ``MinAtar-Breakout-v1``) and a ``module:`` prefix is dropped.
    """
    name = env_id.replace("/", "-")
    return name.split(":", 1)[1] if ":" in name else name
