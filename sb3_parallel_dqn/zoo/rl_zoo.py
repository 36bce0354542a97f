"""
Train ``ParallelDQN`` with rl-baselines3-zoo's own train script (optional extra ``zoo``), as SBX does for its algorithms.

    python -m sb3_parallel_dqn.zoo --algo parallel_dqn --env CartPole-v1 -conf zoo_configs/dqn.yml
    python -m sb3_parallel_dqn.zoo --env CartPole-v1 -n 20000 --seed 0      # the same defaults, a shorter run
    mpirun -np 2 python -m sb3_parallel_dqn.zoo --env CartPole-v1 --seed 0

Every option of ``python -m rl_zoo3.train`` works, and the run lands where the zoo puts it:
``<log-folder>/parallel_dqn/<env>_<id>/`` with ``<env>.zip`` (a plain SB3 DQN file), monitor files and
``<env>/{config,args}.yml``. What this wrapper adds to the zoo's ``train()``:

- :func:`register` makes ``parallel_dqn`` a zoo algorithm: ``ParallelDQN`` in ``rl_zoo3.ALGOS`` (one dict, shared
  by ``train``, ``exp_manager``, ``enjoy``...) and DQN's search space for ``-optimize``. Call it from your own
  script to use other zoo tools with ``--algo parallel_dqn``;
- ``--algo`` defaults to ``parallel_dqn`` (the zoo's default is ``ppo``);
- ``-conf`` defaults to this project's ``zoo_configs/dqn.yml`` (:data:`sb3_parallel_dqn.zoo.hyperparams.DEFAULT_CONF_FILE`,
  recorded in ``args.yml``; without it, exit code 2 and a request for ``-conf``): the zoo would look for
  ``hyperparams/parallel_dqn.yml`` inside rl_zoo3, which has none. The zoo reads the file itself, so its ``eval``
  of strings such as ``policy_kwargs`` applies, as for any zoo config (``scripts/train.py`` parses them without
  ``eval``);
- ``--num-threads N`` is honoured: ``ParallelDQN`` otherwise sets one torch thread when it is built.

Under ``mpirun -np W`` every rank runs the zoo's experiment manager. Left alone (as with SBX's recipe), the ranks
each pick a run id and usually split into two folders (the model in either one), draw different random seeds,
each evaluate, and would write the same ``0.monitor.csv`` whenever they share a folder. Here instead:

- rank 0 chooses the run folder and the seed (a random one unless ``--seed``) and sends them to the others, so
  ``args.yml`` reproduces the job: env ``i`` of rank ``r`` is seeded ``seed + r * n_envs + i`` and writes a monitor
  file named after both (:func:`sb3_parallel_dqn.make_parallel_vec_env` builds the envs, with one process too);
- ``-n``, ``--eval-freq`` and ``--save-freq`` count global env steps, summed over ranks;
- only rank 0 prints, evaluates (``evaluations.npz``, ``best_model.zip``), checkpoints, shows ``-P``'s progress
  bar and writes the config files; the model zip is rank 0's (``ParallelDQN.save`` only writes there);
- refused with exit code 2: another ``--algo``, ``-optimize`` and ``--track`` (each rank would sample its own
  hyperparameters or start its own wandb run);
- ``normalize``: as with ``scripts/train.py``, each rank normalises with its own running statistics (its envs are
  i.i.d. copies, so they agree up to sampling noise) and rank 0's are saved, once, atomically.
  ``--save-replay-buffer`` writes one ``replay_buffer.rank<r>.pkl`` per rank, which the zoo's ``-i`` does not look
  for: resume those with ``scripts/train.py``.

The zoo's ``enjoy`` is not wrapped: it only shrinks the replay buffer of the off-policy algorithms it knows by name,
and rl_zoo3 2.9.2's ``enjoy`` module imports ``requests``, which it does not declare. Evaluate a run with
``python scripts/evaluate.py --model <run>/<env>.zip --env <env> -conf <the config it trained with>``: the zoo's
``<env>/config.yml`` is a flat dump of the entry, not the one-entry config file that the scripts save and read.

Without rl_zoo3, :func:`main` prints how to install it and returns 2. Importing ``sb3_parallel_dqn`` (or this
module) never imports rl_zoo3.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from sb3_parallel_dqn.callbacks import GlobalProgressBarCallback
from sb3_parallel_dqn.distributed import comm, lockstep, mesh
from sb3_parallel_dqn.distributed.devices import set_torch_threads
from sb3_parallel_dqn.envs import make_parallel_vec_env, register_env_packages
from sb3_parallel_dqn.io.checkpoints import save_vecnormalize
from sb3_parallel_dqn.parallel_dqn import ParallelDQN
from sb3_parallel_dqn.scaling import scale_to_world
from sb3_parallel_dqn.zoo import ALGO
from sb3_parallel_dqn.zoo.hyperparams import DEFAULT_CONF_FILE

if TYPE_CHECKING:
    from rl_zoo3.exp_manager import ExperimentManager
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecEnv

    _ManagerBase = ExperimentManager
else:
    _ManagerBase = object

INSTALL_HINT = 'rl_zoo3 is not installed: pip install "sb3_parallel_dqn[zoo]"'


class ZooNotInstalledError(ImportError):
    """rl_zoo3 cannot be imported."""


class ZooUsageError(ValueError):
    """An option or config the wrapper refuses; every rank detects it the same way, so all exit cleanly."""


def _import_zoo() -> ModuleType:
    try:
        import rl_zoo3
        import rl_zoo3.exp_manager
        import rl_zoo3.hyperparams_opt
        import rl_zoo3.train
    except ModuleNotFoundError as err:
        # Only rl_zoo3 itself missing gets the hint; a broken install (one of its dependencies missing) keeps the
        # original error, which names the module to install.
        if err.name is None or err.name.partition(".")[0] != "rl_zoo3":
            raise
        raise ZooNotInstalledError(INSTALL_HINT) from err
    return rl_zoo3


def register() -> None:
    """
    Register ``ParallelDQN`` as the zoo algorithm ``parallel_dqn`` (idempotent).

    The zoo builds ``--algo``'s choices from ``ALGOS`` when its scripts run, so call this before them. DQN's
    hyperparameter sampler and converter serve ``-optimize``.

    :raises ZooNotInstalledError: when rl_zoo3 is not installed
    """
    rl_zoo3 = _import_zoo()
    # One dict, imported by name into several modules; SBX's recipe rebinds the names, so set the key on each in
    # case another plugin did that with a copy.
    for module in (rl_zoo3, rl_zoo3.utils, rl_zoo3.train, rl_zoo3.exp_manager):
        module.ALGOS[ALGO] = ParallelDQN
    hyperparams_opt = rl_zoo3.hyperparams_opt
    hyperparams_opt.HYPERPARAMS_SAMPLER[ALGO] = hyperparams_opt.HYPERPARAMS_SAMPLER["dqn"]
    hyperparams_opt.HYPERPARAMS_CONVERTER[ALGO] = hyperparams_opt.HYPERPARAMS_CONVERTER["dqn"]


@contextlib.contextmanager
def _swapped(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Temporarily replace ``owner.name``: the zoo looks up these module globals at call time."""
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


class _ParallelExperimentManager(_ManagerBase):
    """
    The zoo's ``ExperimentManager``, with one run folder, seed and evaluation for the whole MPI job.

    A mixin, so that rl_zoo3 stays an optional import: :func:`_experiment_manager_class` puts it in front of the real
    class. With one process it only adds the defaults and ``--num-threads`` of the module docstring.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rank, self._world_size = comm.rank(), comm.world_size()
        if self.algo == ALGO and self.args.conf_file is None:
            if not DEFAULT_CONF_FILE.is_file():
                raise ZooUsageError(f"the default config {DEFAULT_CONF_FILE} is missing: pass -conf")
            self.config = self.args.conf_file = str(DEFAULT_CONF_FILE)
        if self._world_size == 1:
            return
        refused = [
            f"--algo {self.algo} (only {ALGO} trains in parallel)" if self.algo != ALGO else "",
            "-optimize" if self.optimize_hyperparameters else "",
            "--track" if self.args.track else "",
        ]
        if any(refused):
            raise ZooUsageError(f"not supported under mpirun: {', '.join(filter(None, refused))}; run it as one process")
        # Every rank computed a run id from the folder listing and drew a seed of its own; rank 0's count.
        self.seed = self.args.seed = comm.broadcast_object(self.seed)
        self.save_path = comm.broadcast_object(self.save_path)
        self.params_path = f"{self.save_path}/{self.env_name}"
        # The zoo divides these by n_envs to count the callbacks' calls; each call is n_envs steps on every rank, so
        # take this rank's share first to keep them global, like -n. Only rank 0 evaluates and saves checkpoints.
        for name in ("eval_freq", "save_freq"):
            freq = getattr(self, name)
            setattr(self, name, lockstep.per_rank(freq, mesh.get(1)) if freq > 0 and self._rank == 0 else -1)

    def setup_experiment(self) -> tuple[BaseAlgorithm, dict[str, Any]] | None:
        result = super().setup_experiment()
        model = None if result is None else result[0]
        if self._world_size > 1 and (getattr(model, "model_parallel_size", 1) > 1 or getattr(model, "shard_optimizer", False)):
            # The zoo evaluates and saves on rank 0 alone: a split model or a sharded optimizer needs every rank there.
            raise ZooUsageError(
                "model_parallel_size > 1 and shard_optimizer are not supported here: use python -m sb3_parallel_dqn.train"
            )
        if self.algo == ALGO and self.args.num_threads > 0:
            # The zoo set the threads before building the model, whose constructor then picked its own default.
            set_torch_threads(self.args.num_threads)
        return result

    def _preprocess_hyperparams(self, hyperparams: dict[str, Any]) -> tuple[Any, ...]:
        kwargs, *rest = super()._preprocess_hyperparams(hyperparams)
        # This project's rule for other world sizes (its entries say what they were tuned for), as scripts/train.py
        # applies it; the zoo would hand the two keys to the constructor.
        scaling, tuned_world_size = kwargs.pop("scaling", "none"), kwargs.pop("tuned_world_size", 1)
        if scaling != "none":
            ranks = self._world_size // int(kwargs.get("model_parallel_size", 1))
            kwargs = scale_to_world(kwargs, scaling, max(ranks, 1), tuned_world_size)
        return (kwargs, *rest)

    def create_envs(self, n_envs: int, eval_env: bool = False, no_log: bool = False) -> VecEnv:
        import rl_zoo3.exp_manager

        # Same arguments as SB3's make_vec_env, plus rank-offset seeds, monitor files named by rank, and workers
        # started without the MPI launcher's variables.
        with _swapped(rl_zoo3.exp_manager, "make_vec_env", make_parallel_vec_env):
            return super().create_envs(n_envs, eval_env, no_log)

    def create_callbacks(self) -> None:
        if self._world_size == 1 or not self.show_progress:
            super().create_callbacks()
            return
        # The zoo's bar counts this rank's steps only; one bar on rank 0 counts the job's.
        n_before = len(self.callbacks)
        self.show_progress = False
        super().create_callbacks()
        self.show_progress = True
        if self._rank == 0:
            self.callbacks.insert(n_before, GlobalProgressBarCallback())

    def _save_config(self, saved_hyperparams: dict[str, Any]) -> None:
        if self._rank == 0:  # every rank would write the same files at the same time
            super()._save_config(saved_hyperparams)

    def save_trained_model(self, model: BaseAlgorithm) -> None:
        # As the zoo, with one writer of the VecNormalize statistics (rank 0's, atomically), as scripts/train.py: every
        # rank normalises with its own, and would write the same file at the same time.
        normalize, self.normalize = self.normalize, False
        try:
            super().save_trained_model(model)
        finally:
            self.normalize = normalize
        if normalize:
            save_vecnormalize(model.get_vec_normalize_env(), os.path.join(self.params_path, "vecnormalize.pkl"))


@functools.cache
def _experiment_manager_class() -> type[ExperimentManager]:
    from rl_zoo3.exp_manager import ExperimentManager

    return type("ParallelExperimentManager", (_ParallelExperimentManager, ExperimentManager), {})


@contextlib.contextmanager
def _stdout_on_root_only() -> Iterator[None]:
    # The zoo prints its settings with print(); W copies help nobody. Errors still reach stderr from every rank.
    if comm.is_root():
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def main(argv: list[str] | None = None) -> int:
    """
    Run rl_zoo3's ``train`` with ``parallel_dqn`` registered, on one process or on every rank of ``mpirun``.

    :param argv: the zoo's command-line arguments (default: ``sys.argv[1:]``)
    :return: 0 on success, 2 when rl_zoo3 is missing or an option is refused (argparse errors exit with 2 too)
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        register()
    except ZooNotInstalledError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import rl_zoo3.train

    # rl_zoo3's import_envs knows ale-py but not MinAtar, whose ids gymnasium >= 1.0 only has once registered.
    register_env_packages()
    # A leading default, so that the user's own --algo (argparse keeps the last one) still wins.
    zoo_argv = ["python -m sb3_parallel_dqn.zoo", "--algo", ALGO, *argv]
    try:
        with (
            _swapped(sys, "argv", zoo_argv),
            _swapped(rl_zoo3.train, "ExperimentManager", _experiment_manager_class()),
            _stdout_on_root_only(),
        ):
            rl_zoo3.train.train()
    except ZooUsageError as err:
        if comm.is_root():
            print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
