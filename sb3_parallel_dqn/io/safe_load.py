"""
Load a saved model's weights, and nothing else, from a file that may come from an untrusted source.

``ParallelDQN.load`` (that is, SB3's ``BaseAlgorithm.load``) unpickles: the ``data`` member of the zip is JSON whose
entries (the policy class, the spaces, the schedules...) are cloudpickle payloads, and unpickling can run any code
the file's author chose. **Use** ``ParallelDQN.load``, ``DQN.load`` **and** ``VecNormalize.load`` **only on files you
trust**, exactly as you would ``pickle.load``.

The functions here never read ``data``. They read one member of the zip, ``policy.pth`` (the policy's
``state_dict``: the Q-network and its target network), with ``torch.load(weights_only=True)``, whose restricted
unpickler accepts tensors and plain containers only and refuses any other object before it is created. The model is
built from what the caller says instead of what the file says: a policy name, ``policy_kwargs`` and an env
(:func:`load_weights_only`), or a zoo config entry (:func:`sb3_parallel_dqn.zoo.load_weights_only_from_config`); the
file's tensors must then fit that policy key for key and shape for shape.

What a weights-only load does not restore, because it lives in ``data`` or in other members: the training counters
(``num_timesteps`` stays 0), the optimizer state (``policy.optimizer.pth``), the learning-rate and exploration
schedules' progress and the ``VecNormalize`` statistics (``vecnormalize.pkl``, a pickle). ``exploration_rate`` is
set to the end of the exploration schedule, the value of a model that finished training, which only matters for
``predict(deterministic=False)``. It is meant for evaluating or fine-tuning a policy, not for resuming a run exactly.

Every problem with the file is a :class:`ModelFileError` naming the file: not a zip (or a truncated one), no
``policy.pth``, a corrupt member, a payload that is not a ``state_dict`` of tensors, or tensors that do not fit the
built policy (the first mismatching key and both shapes). A payload that ``weights_only`` refuses, a pickled object,
is an :class:`UnsafeModelFileError`.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import warnings
import zipfile
import zlib
from typing import Any

import torch as th
from stable_baselines3.common.vec_env import VecEnv

from sb3_parallel_dqn.parallel_dqn import ParallelDQN

#: The zip member holding the policy's ``state_dict`` in an SB3 model file (``BaseAlgorithm.save``).
POLICY_MEMBER = "policy.pth"

#: The largest ``policy.pth`` read, in bytes once decompressed: 1 GiB, some 130 million float32 parameters for the
#: Q-network and its target together (the NatureCNN policy of an Atari model takes 13 MB). A file whose ``policy.pth``
#: is larger is refused before any of it is decompressed, so that a small crafted zip (a "zip bomb") cannot fill the
#: memory. It is read when a file is read: set ``sb3_parallel_dqn.io.safe_load.MAX_POLICY_BYTES`` higher for a larger
#: model you trust. (The command lines' checks of a file they then load in full, which trusts it, pass no bound.)
MAX_POLICY_BYTES = 1 << 30


class ModelFileError(ValueError):
    """A model file that cannot be loaded: not a zip, no or corrupt ``policy.pth``, or weights that do not fit."""


class UnsafeModelFileError(ModelFileError):
    """A ``policy.pth`` that holds pickled objects besides tensors, which ``torch.load(weights_only=True)`` refuses."""


def read_policy_state_dict(path: str | os.PathLike[str], max_bytes: int | None = None) -> dict[str, th.Tensor]:
    """
    The policy's ``state_dict`` stored in an SB3 model zip, read without unpickling any object.

    Only the ``policy.pth`` member is read, with ``torch.load(weights_only=True, map_location="cpu")``; the
    ``data`` member and the others are never opened.

    :param path: the model file (``.zip``)
    :param max_bytes: the largest ``policy.pth`` read (decompressed); default :data:`MAX_POLICY_BYTES`, as it is
        at the call
    :return: parameter and buffer names mapped to CPU tensors
    :raises FileNotFoundError: when ``path`` does not exist
    :raises UnsafeModelFileError: when ``policy.pth`` holds anything ``weights_only`` refuses
    :raises ModelFileError: for any other problem with the file
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    payload = _read_member(path, POLICY_MEMBER, MAX_POLICY_BYTES if max_bytes is None else max_bytes)
    try:
        # torch warns about pickle protocols it did not write before refusing them; the refusal is what we report.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = th.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch reports every failure of its restricted unpickler the same way, damaged bytes included; a refused
        # GLOBAL (a class or function to import and call) is what marks a pickled object.
        reason = _weights_only_reason(err)
        if "GLOBAL" in reason:
            raise UnsafeModelFileError(
                f"{path}: {POLICY_MEMBER} holds pickled objects, not only tensors, and was refused without running "
                f"them ({reason})"
            ) from None
        raise ModelFileError(f"{path}: {POLICY_MEMBER} is not a readable PyTorch file ({reason})") from None
    except Exception as err:  # any failure to parse untrusted bytes (RuntimeError, KeyError, EOFError...) means the same
        raise ModelFileError(
            f"{path}: {POLICY_MEMBER} is not a readable PyTorch file ({type(err).__name__}: {_first_line(err)})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, th.Tensor) for k, v in state.items()):
        raise ModelFileError(f"{path}: {POLICY_MEMBER} is not a state_dict of tensors (it holds a {type(state).__name__})")
    return state


def check_dqn_state_dict(state: dict[str, th.Tensor], source: str) -> None:
    """
    Raise a :class:`ModelFileError` unless ``state`` is a DQN policy's: a Q-network and its target network
    (``q_net.*`` and ``q_net_target.*`` keys), as SB3's ``DQN`` and ``ParallelDQN`` save them. A model of another
    algorithm (PPO's ``mlp_extractor``, ``action_net`` and ``value_net``...) is refused from its tensors alone,
    before anything unpickles its ``data`` or builds a model or an env for it.

    :param state: a ``state_dict`` read by :func:`read_policy_state_dict`
    :param source: the file, for the message
    """
    if not any(key.startswith("q_net.") for key in state) or not any(key.startswith("q_net_target.") for key in state):
        parts = ", ".join(sorted({key.split(".")[0] for key in state})) or "none"
        raise ModelFileError(
            f"{source}: not a DQN model: its {POLICY_MEMBER} has no q_net and q_net_target weights (it has: {parts}); "
            "is it a model of another algorithm?"
        )


def set_policy_weights(model: ParallelDQN, path: str | os.PathLike[str]) -> None:
    """
    Load the weights of a model file into ``model``'s policy in place, reading only ``policy.pth``.

    Every key of the policy's ``state_dict`` must be in the file with the same shape, and the file may have no other
    keys: a partial load would leave a mix of trained and random weights.

    :param model: a model whose policy has the architecture of the saved one
    :param path: the model file
    :raises ModelFileError: see :func:`read_policy_state_dict`, and when the weights do not fit the policy
    """
    state = read_policy_state_dict(path)
    check_state_dict_fits(state, model.policy.state_dict(), os.fspath(path))
    model.policy.load_state_dict(state)


def check_state_dict_fits(state: dict[str, th.Tensor], expected: dict[str, th.Tensor], source: str) -> None:
    """
    Raise a :class:`ModelFileError` naming the first key of ``expected`` (in the policy's order) that ``state`` lacks
    or holds with another shape, or else the first key of ``state`` that the policy does not have.

    :param state: the loaded ``state_dict``
    :param expected: the built policy's ``state_dict``
    :param source: the file, for the message
    """
    hint = "was it trained with another env, policy or policy_kwargs (net_arch)?"
    for key, tensor in expected.items():
        if key not in state:
            raise ModelFileError(f"{source}: {POLICY_MEMBER} has no {key!r}, which the built policy has; {hint}")
        if state[key].shape != tensor.shape:
            raise ModelFileError(
                f"{source}: {key!r} has shape {tuple(state[key].shape)} in {POLICY_MEMBER} but "
                f"{tuple(tensor.shape)} in the built policy; {hint}"
            )
    for key in state:
        if key not in expected:
            raise ModelFileError(f"{source}: {POLICY_MEMBER} has {key!r}, which the built policy does not have; {hint}")


def load_weights_only(
    path: str | os.PathLike[str],
    env: VecEnv | str,
    policy: str = "MlpPolicy",
    *,
    policy_kwargs: dict[str, Any] | None = None,
    device: th.device | str = "cpu",
    **model_kwargs: Any,
) -> ParallelDQN:
    """
    Build a ``ParallelDQN`` from the given settings and load a model file's weights into it, reading only
    ``policy.pth`` with ``torch.load(weights_only=True)`` (see the module docstring for what is not restored).

    The architecture comes from the arguments, not from the file: pass the ``policy`` and ``policy_kwargs`` the model
    was trained with, and an env with its observation and action spaces. Under MPI the constructor is collective:
    call it on every rank.

    :param path: the model file (``.zip``), e.g. from an untrusted source
    :param env: the env (or env id) the model acts in
    :param policy: the policy name, as given to ``ParallelDQN``
    :param policy_kwargs: the policy's keyword arguments (``net_arch``, ``activation_fn``...)
    :param device: the torch device of the model
    :param model_kwargs: further ``ParallelDQN`` arguments (``gamma``, ``exploration_final_eps``...)
    :return: the model, with the file's weights in ``policy`` (``q_net`` and ``q_net_target``)
    :raises FileNotFoundError: when ``path`` does not exist
    :raises ModelFileError: for a file that is not a model zip, a refused or corrupt ``policy.pth`` (an
        :class:`UnsafeModelFileError` when it holds pickled objects), or weights that do not fit the built policy
    """
    # Read and check the file before building anything: a bad file fails fast, without envs or buffers.
    state = read_policy_state_dict(path)
    return build_with_weights(state, os.fspath(path), env, policy, policy_kwargs, device, model_kwargs)


def build_with_weights(
    state: dict[str, th.Tensor],
    source: str,
    env: VecEnv | str,
    policy: str,
    policy_kwargs: dict[str, Any] | None,
    device: th.device | str,
    model_kwargs: dict[str, Any],
) -> ParallelDQN:
    model = ParallelDQN(policy, env, policy_kwargs=policy_kwargs, device=device, **model_kwargs)
    check_state_dict_fits(state, model.policy.state_dict(), source)
    model.policy.load_state_dict(state)
    # The saved exploration_rate lives in ``data``; a fresh model has 0. The schedule's end is what a model that
    # finished training has, so that predict(deterministic=False) explores as it would after a full load.
    model.exploration_rate = model.exploration_schedule(0.0)
    return model


def _read_member(path: str, name: str, max_bytes: int) -> bytes:
    """The bytes of one member of a zip, at most ``max_bytes`` of them; every failure a :class:`ModelFileError`."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            # The size the zip declares is the most zipfile decompresses (it stops there), so a member declared
            # small cannot grow while it is read.
            size = archive.getinfo(name).file_size if name in names else 0
            if size > max_bytes:
                raise ModelFileError(
                    f"{path}: {name} is {size} bytes once decompressed, over the limit of {max_bytes} "
                    "(sb3_parallel_dqn.io.safe_load.MAX_POLICY_BYTES; raise it for a larger model you trust)"
                )
            # read() checks the member's CRC, so a damaged member is an error here rather than odd tensors later.
            payload = archive.read(name) if name in names else None
    except zipfile.BadZipFile as err:
        raise ModelFileError(f"{path}: not a zip file, or a truncated or damaged one ({err})") from None
    # zlib.error: a damaged deflate stream; NotImplementedError: an unknown compression method; ValueError, EOFError:
    # inconsistent headers.
    except (OSError, EOFError, ValueError, NotImplementedError, zlib.error) as err:
        raise ModelFileError(f"{path}: cannot read {name} from the zip ({_first_line(err)})") from None
    if payload is None:
        members = ", ".join(sorted(names)) or "none"
        raise ModelFileError(f"{path}: no {name} in the zip (members: {members}); is it an SB3 model file?")
    return payload


_PICKLE_OPCODES = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
# How an opcode's argument says its own length (pickletools' ArgumentDescriptor.n): the bytes of the length, signed.
_LENGTH_PREFIXES = {
    pickletools.TAKEN_FROM_ARGUMENT1: (1, False),
    pickletools.TAKEN_FROM_ARGUMENT4: (4, True),
    pickletools.TAKEN_FROM_ARGUMENT4U: (4, False),
    pickletools.TAKEN_FROM_ARGUMENT8U: (8, False),
}


def check_pickle_complete(path: str | os.PathLike[str]) -> None:
    """
    Raise a ``ValueError`` naming ``path`` unless it holds a whole pickle: a stream of opcodes that reaches the final
    ``STOP``, every argument within the file. Nothing is unpickled: the opcodes are walked and the payloads they carry
    (the arrays of a replay buffer) are skipped over without being read, so that a truncated file (an interrupted
    copy, a full disk) is found in a fraction of the time its load would take, before any of that load.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        while True:
            where = stream.tell()
            code = stream.read(1)
            if not code:
                raise ValueError(f"{path}: truncated: it ends at byte {size}, before the end of its pickle (STOP)")
            op = _PICKLE_OPCODES.get(code)
            if op is None:
                raise ValueError(f"{path}: not a pickle, or a damaged one: byte {where} is no pickle opcode ({code!r})")
            if op.name == "STOP":
                return
            if op.arg is None:
                continue
            length = op.arg.n
            if length == pickletools.UP_TO_NEWLINE:
                if not stream.readline().endswith(b"\n"):
                    raise ValueError(f"{path}: truncated: it ends in the argument of {op.name} at byte {where}")
                continue
            if length in _LENGTH_PREFIXES:
                n_bytes, signed = _LENGTH_PREFIXES[length]
                prefix = stream.read(n_bytes)
                if len(prefix) < n_bytes:
                    raise ValueError(f"{path}: truncated: it ends in the argument of {op.name} at byte {where}")
                length = int.from_bytes(prefix, "little", signed=signed)
            if length < 0 or stream.tell() + length > size:
                raise ValueError(
                    f"{path}: truncated: {op.name} at byte {where} holds {length} bytes, past the end of the file "
                    f"({size} bytes)"
                )
            stream.seek(length, os.SEEK_CUR)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _weights_only_reason(err: BaseException) -> str:
    """
    The sentence of torch's long ``weights_only`` refusal that says what was refused (e.g. the global), without its
    advice to allow-list that global, which is the wrong advice for a file one does not trust.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0] if lines else "")
    reason = reason.removeprefix("WeightsUnpickler error:").strip()
    return reason.split(". ")[0].rstrip(".") or type(err).__name__
