"""
Run folders in rl-baselines3-zoo's layout: ``<log folder>/parallel_dqn/<env>_<id>[_<uuid>]/``.

A run folder holds the final model ``<env>.zip``, ``best_model.zip`` and ``evaluations.npz`` (periodic evaluation),
checkpoints ``rl_model_<N>_steps.zip`` (see :mod:`sb3_parallel_dqn.io.checkpoints`), one monitor file per env of
each rank ``<rank>.<env index>.monitor.csv``, ``command.txt`` (the command, with the world size) and
``<env>/``: ``config.yml`` (the hyperparameters used), ``args.yml`` (the script's arguments) and
``vecnormalize.pkl`` when the envs are normalized. ``<env>`` is the env id with ``/`` as ``-``, as in the zoo
(``MinAtar-Breakout-v1_1/MinAtar-Breakout-v1.zip``): see :func:`sb3_parallel_dqn.env_names.env_file_name`.

``config.yml`` is itself a zoo-format hyperparameter file with one entry, the env id: its values are those of the
config entry with the command-line overrides applied, as text the loader reads back. Evaluation and resumed runs
rebuild the envs (wrappers, frame stack, normalization) from it.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import yaml

from sb3_parallel_dqn.env_names import env_file_name
from sb3_parallel_dqn.io.checkpoints import list_checkpoints
from sb3_parallel_dqn.zoo import ALGO


def run_ids(log_folder: str | os.PathLike[str], env_id: str, algo: str = ALGO) -> dict[int, pathlib.Path]:
    """The run folders ``<log_folder>/<algo>/<env_id>_<id>[_<uuid>]`` that exist, by id."""
    algo_dir, name = pathlib.Path(log_folder) / algo, env_file_name(env_id)
    found = {}
    for path in algo_dir.glob(f"{name}_*"):
        # "<env>_<id>" or "<env>_<id>_<uuid>": the id is the first field after the env id.
        head = path.name[len(name) + 1 :].split("_", 1)[0]
        if path.is_dir() and head.isdigit():
            found[int(head)] = path
    return dict(sorted(found.items()))


def next_run_dir(log_folder: str | os.PathLike[str], env_id: str, uuid_str: str = "") -> pathlib.Path:
    """``<log_folder>/parallel_dqn/<env>_<n + 1><uuid_str>`` where n is the largest existing id (zoo layout)."""
    last = max(run_ids(log_folder, env_id), default=0)
    return pathlib.Path(log_folder) / ALGO / f"{env_file_name(env_id)}_{last + 1}{uuid_str}"


def claim_run_dir(log_folder: str | os.PathLike[str], env_id: str, uuid_str: str = "") -> pathlib.Path:
    """
    Create the folder of a new run, :func:`next_run_dir`, and return it. The id is claimed atomically: the folder is
    made without ``exist_ok``, so that of two jobs started together in one log folder, the one that finds its id
    taken takes the next one (issue 23, item 5: both used to pick the same id and write into one folder).
    """
    algo_dir = pathlib.Path(log_folder) / ALGO
    algo_dir.mkdir(parents=True, exist_ok=True)
    taken = 0
    while True:
        # Past the ids taken meanwhile, and past a name that run_ids does not list (a file, not a folder).
        run_id = max(max(run_ids(log_folder, env_id), default=0), taken) + 1
        path = algo_dir / f"{env_file_name(env_id)}_{run_id}{uuid_str}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            taken = run_id


def find_run_dir(log_folder: str | os.PathLike[str], env_id: str, exp_id: int = 0, algo: str = ALGO) -> pathlib.Path:
    """
    The folder of run ``exp_id`` (0: the latest) of ``env_id``.

    :raises FileNotFoundError: naming the folder searched
    """
    runs = run_ids(log_folder, env_id, algo)
    if not runs:
        raise FileNotFoundError(f"no run of {env_id} in {pathlib.Path(log_folder) / algo}")
    if exp_id == 0:
        return runs[max(runs)]
    if exp_id not in runs:
        raise FileNotFoundError(f"no run {env_id}_{exp_id} in {pathlib.Path(log_folder) / algo} (ids: {sorted(runs)})")
    return runs[exp_id]


def model_path(
    run_dir: str | os.PathLike[str],
    env_id: str,
    load_best: bool = False,
    load_checkpoint: int | None = None,
    load_last_checkpoint: bool = False,
) -> pathlib.Path:
    """
    The model file of a run, chosen as the zoo's ``enjoy`` does: the final ``<env>.zip`` by default, else
    ``best_model.zip``, checkpoint ``rl_model_<N>_steps.zip`` or the last checkpoint.

    :raises FileNotFoundError: naming the missing file (and the checkpoints there are)
    """
    run_dir = pathlib.Path(run_dir)
    if load_best:
        path = run_dir / "best_model.zip"
    elif load_checkpoint is not None or load_last_checkpoint:
        checkpoints = list_checkpoints(run_dir)
        if not checkpoints:
            raise FileNotFoundError(f"no checkpoint (rl_model_<N>_steps.zip) in {run_dir}")
        step = max(checkpoints) if load_checkpoint is None else load_checkpoint
        if step not in checkpoints:
            raise FileNotFoundError(f"no checkpoint at step {step} in {run_dir} (steps: {list(checkpoints)})")
        path = checkpoints[step]
    else:
        path = run_dir / f"{env_file_name(env_id)}.zip"
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return path


def saved_config_path(run_dir: str | os.PathLike[str], env_id: str) -> pathlib.Path:
    """``<run_dir>/<env>/config.yml``."""
    return pathlib.Path(run_dir) / env_file_name(env_id) / "config.yml"


def write_run_files(
    run_dir: pathlib.Path,
    env_id: str,
    entry: dict[str, Any],
    source: str,
    args: dict[str, Any],
    command: str,
) -> None:
    """
    Write ``<env>/config.yml``, ``<env>/args.yml`` and ``command.txt`` of a new run (rank 0 only).

    :param entry: the raw config entry with the overrides applied (values as in a YAML file)
    :param source: where the entry came from, e.g. ``"entry 'atari' of zoo_configs/dqn.yml"``, kept as a comment
    :param args: the script's arguments
    :param command: the command line, with ``mpirun -np W`` when under MPI
    """
    env_dir = run_dir / env_file_name(env_id)
    env_dir.mkdir(parents=True, exist_ok=True)
    header = f"# Hyperparameters of this run: {source}, with command-line overrides applied.\n"
    body = yaml.safe_dump({env_id: entry}, sort_keys=False)
    (env_dir / "config.yml").write_text(header + body)
    (env_dir / "args.yml").write_text(yaml.safe_dump(args))
    (run_dir / "command.txt").write_text(command + "\n")


def yaml_value(value: Any, text: str) -> Any:
    """
    A command-line override as config.yml should store it: the parsed value when YAML can hold it as plain data
    (numbers, strings, lists, dicts), else the original text (``dict(activation_fn=nn.Tanh)``), which the loader
    parses again.
    """

    def plain(item: Any) -> bool:
        if item is None or isinstance(item, bool | int | float | str):
            return True
        if isinstance(item, list | tuple):
            return all(plain(x) for x in item)
        if isinstance(item, dict):
            return all(isinstance(k, str) and plain(v) for k, v in item.items())
        return False

    def as_yaml(item: Any) -> Any:  # safe_dump writes lists, not tuples
        if isinstance(item, list | tuple):
            return [as_yaml(x) for x in item]
        if isinstance(item, dict):
            return {k: as_yaml(v) for k, v in item.items()}
        return item

    return as_yaml(value) if plain(value) else text
