"""
Checkpoints that survive a crash mid-write, and the file names that tie a model to its replay-buffer shards.

Every file is written next to its destination under a temporary name, flushed to disk and renamed over the
destination (:func:`atomic_path`): a rename is atomic on POSIX filesystems, so a reader (or a resumed run) sees
either the previous complete file or the new complete file, never half of one.

File layout, as SB3's ``CheckpointCallback`` and the zoo, with one replay buffer file per MPI rank:

- ``rl_model_<N>_steps.zip``: the model after N global steps (rank 0 writes it);
- ``rl_model_replay_buffer_<N>_steps.pkl`` with one process, else ``rl_model_replay_buffer_<N>_steps.rank<r>.pkl``
  for each rank r (every rank writes its own shard);
- ``rl_model_vecnormalize_<N>_steps.pkl``: rank 0's ``VecNormalize`` statistics, when the envs are normalized;
- at the end of a run: ``<env>.zip`` and ``replay_buffer[.rank<r>].pkl``.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import pickletools
import re
from collections.abc import Callable, Iterator
from typing import Any, overload

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.vec_env import VecEnv, unwrap_vec_normalize

from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.env_names import env_file_name

_CHECKPOINT = re.compile(r"rl_model_(\d+)_steps\.zip")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str) -> Iterator[pathlib.Path]:
    """
    Yield a temporary path to write to; on success, move it over ``path`` atomically, else delete it.

    ``path`` gets ``.<suffix>`` appended when it has no suffix, as SB3's ``save``/``save_to_pkl`` do, and the
    temporary file keeps that suffix so SB3 writes it under exactly that name. The data is ``fsync``-ed before the
    rename and the folder after it, so that even a power cut leaves the old or the new file.

    :param path: the destination
    :param suffix: the extension SB3 would add (``"zip"`` or ``"pkl"``)
    :return: a context manager yielding the temporary path
    """
    final = pathlib.Path(path)
    if final.suffix == "":
        final = pathlib.Path(f"{final}.{suffix}")
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.stem}.{os.getpid()}.tmp{final.suffix}")
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, final)
    except OSError as error:  # disk full, folder not writable...: say which file, and that the old one is safe
        kept = "the previous file is intact" if final.exists() else "no file was written"
        raise OSError(error.errno, f"could not write {final}: {error.strerror or error} ({kept})") from error
    finally:
        temporary.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # some filesystems cannot open or sync a folder
        folder = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_atomically(path: str | os.PathLike[str] | io.BufferedIOBase, suffix: str, write: Callable[[Any], None]) -> None:
    """``write(path)`` through :func:`atomic_path`; a file object is written to directly."""
    if isinstance(path, io.BufferedIOBase):
        write(path)
        return
    with atomic_path(path, suffix) as temporary:
        write(temporary)


def write_on_root(path: str | os.PathLike[str] | io.BufferedIOBase, suffix: str, write: Callable[[Any], None]) -> None:
    """
    :func:`write_atomically` on rank 0. Called on several ranks, it returns on each once rank 0's file is complete
    (rank 0 announces each write; the others wait for it, watched as a collective), so that every rank may read the
    file next, as SB3's save-then-load does (on a file system they share); rank 0 may also call it alone (it never
    waits for the others). If rank 0 also saved to ``path`` alone earlier, another rank cannot tell that earlier
    write from this one and may return as soon as that earlier, complete file is there.
    """
    if comm.is_root():
        write_atomically(path, suffix, write)
    if comm.world_size() == 1 or not isinstance(path, (str, os.PathLike)):
        return  # a file object: only rank 0's holds the bytes
    if comm.is_root():
        comm.announce_written(os.fspath(path))
    else:
        comm.wait_until_written(os.fspath(path), f"save({os.fspath(path)!r}), waiting for rank 0 to write it")


@overload
def rank_path(path: io.BufferedIOBase, rank: int | None = None, world_size: int | None = None) -> io.BufferedIOBase: ...
@overload
def rank_path(path: str | os.PathLike[str], rank: int | None = None, world_size: int | None = None) -> pathlib.Path: ...
def rank_path(
    path: str | os.PathLike[str] | io.BufferedIOBase, rank: int | None = None, world_size: int | None = None
) -> pathlib.Path | io.BufferedIOBase:
    """
    This rank's file of a per-rank pickle (a replay buffer shard): ``replay_buffer.pkl`` with one process,
    ``replay_buffer.rank<r>.pkl`` for rank r of several. ``.pkl`` is added when ``path`` has no suffix, as SB3 does.
    A file object is its own.
    """
    if isinstance(path, io.BufferedIOBase):
        return path
    path = pathlib.Path(path)
    rank = comm.rank() if rank is None else rank
    world_size = comm.world_size() if world_size is None else world_size
    if path.suffix == "":
        path = pathlib.Path(f"{path}.pkl")
    if world_size == 1:
        return path
    return path.with_name(f"{_shard_stem(path)}.rank{rank}.pkl")


def _shard_stem(base: pathlib.Path) -> str:
    """What the rank files of the one-process file ``base`` start with: its name without a ``.pkl`` suffix."""
    return base.name[: -len(".pkl")] if base.name.endswith(".pkl") else base.name


def save_vecnormalize(env: VecEnv | None, path: str | os.PathLike[str]) -> pathlib.Path | None:
    """
    Save the ``VecNormalize`` statistics of ``env`` (found anywhere in its wrappers) to ``path``, atomically, on rank 0
    only: each rank normalises with its own running statistics (its envs are i.i.d. copies, so they agree up to
    sampling noise), and rank 0's are the ones kept, as its model is.

    :param env: the training env, e.g. ``model.get_env()`` or ``model.get_vec_normalize_env()``; None is allowed
    :param path: the file; its folder is created
    :return: the path written, or None when there is no ``VecNormalize`` or this is not rank 0
    """
    vec_normalize = None if env is None else unwrap_vec_normalize(env)
    if vec_normalize is None or not comm.is_root():
        return None
    with atomic_path(path, "pkl") as temporary:  # a crash mid-write keeps the previous statistics
        vec_normalize.save(str(temporary))
    return pathlib.Path(path)


def replay_buffer_path(model_path: str | os.PathLike[str]) -> pathlib.Path:
    """
    The replay buffer saved with a model, before the per-rank suffix (:func:`rank_path`):
    ``rl_model_replay_buffer_<N>_steps.pkl`` for the checkpoint ``rl_model_<N>_steps.zip``, else
    ``replay_buffer.pkl`` in the model's folder (the zoo's name for the final buffer).
    """
    model_path = pathlib.Path(model_path)
    match = _CHECKPOINT.fullmatch(model_path.name)
    if match:
        return model_path.with_name(f"rl_model_replay_buffer_{match.group(1)}_steps.pkl")
    return model_path.with_name("replay_buffer.pkl")


def vecnormalize_path(model_path: str | os.PathLike[str], env_id: str) -> pathlib.Path:
    """The ``VecNormalize`` statistics saved with a model: the checkpoint's own, else ``<env>/vecnormalize.pkl``."""
    model_path = pathlib.Path(model_path)
    match = _CHECKPOINT.fullmatch(model_path.name)
    if match:
        return model_path.with_name(f"rl_model_vecnormalize_{match.group(1)}_steps.pkl")
    return model_path.parent / env_file_name(env_id) / "vecnormalize.pkl"


def replay_buffer_shards(model_path: str | os.PathLike[str]) -> tuple[list[pathlib.Path], int | None]:
    """
    The replay-buffer files saved with a model, and the world size that wrote them (None when there are none).

    :raises ValueError: when the shards are incomplete (some rank's file is missing)
    """
    return saved_shards(replay_buffer_path(model_path))


def saved_shards(path: str | os.PathLike[str]) -> tuple[list[pathlib.Path], int | None]:
    """
    The files of a per-rank pickle saved under ``path`` (before the rank suffix of :func:`rank_path`) by any number
    of ranks, in rank order, and that number (None when there are none).

    :raises ValueError: when the shards are incomplete (some rank's file is missing), or when both a one-process file
        and rank files are there (two saves that :func:`save_shard` did not write; which one is meant is unknown)
    """
    base = rank_path(path, world_size=1)
    ranks = sorted(_rank_files(base))
    if base.exists():
        if ranks:
            raise ValueError(
                f"both {base.name} (saved by one process) and {len(ranks)} rank file(s) {_shard_stem(base)}.rank<r>.pkl "
                f"(saved by several) are in {base.parent}: move away the set you do not mean to load"
            )
        return [base], 1
    if not ranks:
        return [], None
    world_size = len(ranks)
    if ranks != list(range(world_size)):
        missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
        raise ValueError(f"incomplete replay buffer shards {base}: rank(s) {missing} missing")
    return [rank_path(base, rank, world_size) for rank in range(world_size)], world_size


def save_shard(path: str | os.PathLike[str] | io.BufferedIOBase, write: Callable[[Any], None]) -> None:
    """
    Write this rank's file of a per-rank pickle saved under ``path`` (:func:`rank_path`) atomically with
    ``write(target)``. Rank 0 then deletes what an earlier save under the same name by another number of ranks left
    and this save does not overwrite (:func:`remove_stale_shards`): a load would otherwise mix the shards of two
    saves, or take the wrong set. With several ranks, call it on every rank: each returns once every shard is
    written (watched as a collective: a rank that never saves ends the job with a message), so that any rank may
    load the set next.
    """
    write_atomically(rank_path(path), "pkl", write)
    if isinstance(path, io.BufferedIOBase):
        return  # a file object: this rank's bytes only
    if comm.is_root():
        remove_stale_shards(path, comm.world_size())
    if comm.world_size() > 1:
        base = os.fspath(rank_path(path, world_size=1))
        comm.wait_until_all_written(base, f"save_replay_buffer({base!r}), waiting for every rank's shard")


def remove_stale_shards(path: str | os.PathLike[str], world_size: int) -> list[pathlib.Path]:
    """
    Delete the files under ``path`` that a save by ``world_size`` ranks does not write: rank files from rank
    ``world_size`` on and the one-process file when several ranks save, every rank file when one process does.
    Returns the files deleted.
    """
    base = rank_path(path, world_size=1)
    stale = [file for rank, file in sorted(_rank_files(base).items()) if world_size == 1 or rank >= world_size]
    if world_size > 1 and base.exists():
        stale.append(base)
    for file in stale:
        file.unlink(missing_ok=True)
    return stale


def _rank_files(base: pathlib.Path) -> dict[int, pathlib.Path]:
    """The ``<base>.rank<r>.pkl`` files next to the one-process file ``base``, by r."""
    # As rank_path names them: a name not ending in .pkl keeps all of it (it lost four characters here, issue 23).
    pattern = re.compile(re.escape(_shard_stem(base)) + r"\.rank(\d+)\.pkl")
    return {int(m.group(1)): p for p in base.parent.glob("*.pkl") if (m := pattern.fullmatch(p.name))}


def pickled_class(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """
    The module and name of the class of the object pickled in ``path`` (a replay buffer shard), read from the first
    opcodes of the file: nothing is unpickled, imported or read beyond them. None when the file does not start so
    (not a pickle of an object, or unreadable): loading it then says what is wrong.
    """
    strings: list[str] = []
    try:
        with open(path, "rb") as file:
            for count, (opcode, argument, _) in enumerate(pickletools.genops(file)):
                if opcode.name == "GLOBAL" and isinstance(argument, str) and " " in argument:
                    module, name = argument.split(" ", 1)
                    return module, name
                if opcode.name == "STACK_GLOBAL":
                    return (strings[-2], strings[-1]) if len(strings) >= 2 else None
                if isinstance(argument, str):
                    strings.append(argument)
                if count > 16:  # an object's class comes first
                    return None
    except (OSError, ValueError):  # genops' errors for what is no pickle
        return None
    return None


def shard_for_rank(shards: list[pathlib.Path], rank: int, world_size: int) -> pathlib.Path:
    """
    The replay buffer shard that rank ``rank`` of a ``world_size``-rank job resumes from, when ``len(shards)`` ranks
    saved them: shard ``rank mod len(shards)``. With as many ranks, each its own; with fewer, ranks keep the first
    shards (``buffer_size`` is per rank, so fewer ranks hold less in all) and the others are left out; with more, the
    extra ranks start from copies of the first ones, so that every rank has transitions to sample from its first
    update (the shards are i.i.d. collections of the same policy, and each rank samples its copy differently).
    """
    if world_size > len(shards) and world_size % len(shards):
        # Copies would then be uneven (some shards twice, others once): each shard's data would weigh differently.
        raise ValueError(
            f"{len(shards)} replay buffer shard(s) cannot be shared evenly by {world_size} ranks: resume with a "
            f"multiple of {len(shards)} ranks, at most {len(shards)}, or move the replay buffer files away"
        )
    return shards[rank % len(shards)]


@overload
def shard_to_load(path: io.BufferedIOBase) -> io.BufferedIOBase: ...
@overload
def shard_to_load(path: str | os.PathLike[str]) -> pathlib.Path: ...
def shard_to_load(path: str | os.PathLike[str] | io.BufferedIOBase) -> pathlib.Path | io.BufferedIOBase:
    """
    This rank's file of a per-rank pickle saved under ``path`` by any number of ranks (:func:`shard_for_rank`); its
    own name (:func:`rank_path`) when nothing was saved there, so that the error names the file looked for. A file
    object is its own.
    """
    if isinstance(path, io.BufferedIOBase):
        return path
    shards, _ = saved_shards(path)
    return shard_for_rank(shards, comm.rank(), comm.world_size()) if shards else rank_path(path)


def list_checkpoints(folder: str | os.PathLike[str]) -> dict[int, pathlib.Path]:
    """The ``rl_model_<N>_steps.zip`` files of a run folder, by N."""
    found = {}
    for path in pathlib.Path(folder).glob("rl_model_*_steps.zip"):
        match = _CHECKPOINT.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


class ParallelCheckpointCallback(CheckpointCallback):
    """
    SB3's ``CheckpointCallback`` for ``ParallelDQN``: ``save_freq`` counts *global* env steps, checkpoints fall on
    rollout boundaries so that a resumed run continues exactly, and writes are atomic.

    SB3's callback saves in the middle of a rollout, before the gradient steps of that rollout: a run resumed from
    it skips those updates. Here a checkpoint falls due when ``num_timesteps`` reaches the next multiple of
    ``save_freq`` and is written at the start of the next rollout (after ``train()``), or at the end of training;
    it is named after ``num_timesteps`` at that moment. Every counter (global timesteps, gradient updates, env-step
    calls, hence schedules and the target-update phase) then resumes exactly where it was.

    Every rank must use it with the same arguments: each rank writes its own replay buffer shard, and rank 0 writes
    the model (``ParallelDQN.save`` does nothing on other ranks) and the ``VecNormalize`` statistics. The model is
    written last, so that a checkpoint zip on disk means rank 0's other files of that step are complete. It calls
    no MPI collective (a rank stopped by another callback must not leave the others waiting here); ranks reach the
    same step together because they step their envs in lockstep.

    :param save_freq: save every this many global env steps (summed over ranks and envs)
    :param save_path: folder of the checkpoints
    :param name_prefix: common prefix of the files
    :param save_replay_buffer: also save every rank's replay buffer
    :param save_vecnormalize: also save the ``VecNormalize`` statistics (rank 0's)
    :param verbose: 2 prints each saved file (rank 0 only)
    """

    def __init__(
        self,
        save_freq: int,
        save_path: str,
        name_prefix: str = "rl_model",
        save_replay_buffer: bool = False,
        save_vecnormalize: bool = False,
        verbose: int = 0,
    ) -> None:
        if save_freq < 1:
            raise ValueError(f"save_freq must be >= 1, not {save_freq}")
        super().__init__(save_freq, save_path, name_prefix, save_replay_buffer, save_vecnormalize, verbose)
        self._next_save = save_freq

    def _init_callback(self) -> None:
        super()._init_callback()
        # A resumed run goes on with the original run's schedule of checkpoints.
        self._next_save = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq
        if not comm.is_root():
            self.verbose = 0

    def _on_step(self) -> bool:
        return True

    # Decided at rollout boundaries only, from num_timesteps as every rank agreed on it at the end of the rollout:
    # deciding per env step, as SB3 does, let a rank that a callback stopped early skip a checkpoint that the others
    # wrote, leaving a model without that rank's replay buffer shard (or the reverse).
    def _on_rollout_start(self) -> None:
        self._save_if_due()

    def _on_training_end(self) -> None:
        self._save_if_due()

    def _save_if_due(self) -> None:
        if self.model.num_timesteps >= self._next_save:
            self._next_save = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        """Write this rank's files of a checkpoint now."""
        self.num_timesteps = self.model.num_timesteps  # named after the step it holds
        save_checkpoint(
            self.model,
            self.save_path,
            self.name_prefix,
            save_replay_buffer=self.save_replay_buffer,
            save_vecnormalize=self.save_vecnormalize,
            verbose=self.verbose,
        )


def save_checkpoint(
    model: BaseAlgorithm,
    folder: str | os.PathLike[str],
    name_prefix: str = "rl_model",
    save_replay_buffer: bool = False,
    save_vecnormalize: bool = True,
    verbose: int = 0,
) -> pathlib.Path:
    """
    Write this rank's files of a checkpoint of ``model`` at its current ``num_timesteps`` (see the module docstring
    for the names): the replay buffer shard (every rank), the ``VecNormalize`` statistics and then the model (rank
    0). Call it on every rank at the same step, at a rollout boundary for an exact resume.

    :return: the model file of the checkpoint
    """
    step = model.num_timesteps
    folder = pathlib.Path(folder)
    if save_replay_buffer and getattr(model, "replay_buffer", None) is not None:
        path = folder / f"{name_prefix}_replay_buffer_{step}_steps.pkl"
        model.save_replay_buffer(path)  # type: ignore[attr-defined]
        if verbose >= 2:
            print(f"Saving model replay buffer checkpoint to {path}")
    if save_vecnormalize:
        saved = _save_vecnormalize(model.get_vec_normalize_env(), folder / f"{name_prefix}_vecnormalize_{step}_steps.pkl")
        if saved is not None and verbose >= 2:
            print(f"Saving model VecNormalize to {saved}")
    model_path = folder / f"{name_prefix}_{step}_steps.zip"
    model.save(model_path)
    if verbose >= 2:
        print(f"Saving model checkpoint to {model_path}")
    return model_path


_save_vecnormalize = save_vecnormalize  # save_checkpoint's flag of the same name hides the function there
