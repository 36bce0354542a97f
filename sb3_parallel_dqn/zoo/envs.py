"""
Turn a zoo hyperparameter entry into model keyword arguments and the envs it describes.

The envs are wrapped as rl-baselines3-zoo's ``ExperimentManager.create_envs`` wraps them (rl_zoo3 2.9), in this
order, innermost first:

1. ``Monitor``, then the ``env_wrapper`` classes in the order given (inside each env, see
   :func:`sb3_parallel_dqn.envs.make_parallel_vec_env`);
2. the ``vec_env_wrapper`` classes, in the order given;
3. ``VecNormalize`` (``normalize``), or the statistics loaded from a ``vecnormalize.pkl``;
4. ``VecFrameStack`` (``frame_stack``);
5. ``VecTransposeImage`` when an image observation is not channel-first.

The zoo imports the classes named by ``env_wrapper``, ``vec_env_wrapper`` and ``callback`` and uses whatever it
finds. Here :func:`split_hyperparams` imports the named module, looks the name up and accepts the object only if it
is a class deriving from ``gymnasium.Wrapper``, ``VecEnvWrapper`` or ``BaseCallback`` respectively; anything else
(``os.system``, ``builtins.eval``, ``subprocess.Popen``, a missing name) is a :class:`ConfigError` before anything is
called or any env is built. The config can thus only pick installed classes of those kinds, never run code of its
own; importing the named module does run that module's top-level code, as any import does. For a weights-only load
(``refuse_imports_from``), a module that would come from the model's folder or the working directory (which
``python -m`` puts on ``sys.path``) is refused before it is imported.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import inspect
import os
import pathlib
import sys
from typing import Any

import gymnasium as gym
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecEnv,
    VecEnvWrapper,
    VecFrameStack,
    VecNormalize,
    VecTransposeImage,
    is_vecenv_wrapped,
)

from sb3_parallel_dqn.buffers.frame import FrameReplayBuffer
from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.envs import make_parallel_vec_env, register_env_packages
from sb3_parallel_dqn.scaling import scale_to_world
from sb3_parallel_dqn.validation import ConfigError
from sb3_parallel_dqn.zoo.hyperparams import class_entries


@dataclasses.dataclass
class ClassSpec:
    """
    A class named in a config, resolved and checked, with the keyword arguments to instantiate it with.

    :param name: the name as written in the config (or the class' qualified name), for messages
    :param cls: the class
    :param kwargs: keyword arguments, plain YAML values
    """

    name: str
    cls: type
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def make(self, *args: Any) -> Any:
        """``cls(*args, **kwargs)``."""
        # A copy per instance: a wrapper that changes a list it was given must not change it for the next env.
        return self.cls(*args, **copy.deepcopy(self.kwargs))


class EnvWrappers:
    """
    Apply the ``env_wrapper`` classes to an env, in order: the ``wrapper_class`` given to ``make_parallel_vec_env``.

    A module-level class holding classes (pickled by reference) and plain keyword arguments, so that it reaches
    ``SubprocVecEnv`` workers under every start method.

    :param specs: the wrappers, innermost first
    """

    def __init__(self, specs: tuple[ClassSpec, ...]) -> None:
        self.specs = specs

    def __call__(self, env: gym.Env) -> gym.Env:
        for spec in self.specs:
            env = spec.make(env)
        return env

    def __repr__(self) -> str:
        return f"EnvWrappers({[spec.name for spec in self.specs]})"


@dataclasses.dataclass
class EnvSettings:
    """
    The entries of a zoo config that describe the run and its envs rather than the model.

    :param n_timesteps: training length in global env steps, if the entry gives one
    :param n_envs: envs per rank
    :param policy: the policy name
    :param env_kwargs: keyword arguments of ``gym.make``
    :param vec_env: ``"dummy"``, ``"subproc"`` or None (see :func:`sb3_parallel_dqn.envs.resolve_vec_env_cls`)
    :param frame_stack: frames stacked by ``VecFrameStack``; 0 for none
    :param env_wrappers: ``env_wrapper``: gym wrappers applied inside each env after ``Monitor``, innermost first
    :param vec_env_wrappers: ``vec_env_wrapper``: ``VecEnvWrapper`` classes, innermost first
    :param normalize_kwargs: ``normalize``: ``VecNormalize`` keyword arguments for the training env, or None for
        no normalisation
    :param callbacks: ``callback``: the callback classes, see :func:`make_callbacks`
    """

    n_timesteps: int | None = None
    n_envs: int = 1
    policy: str = "MlpPolicy"
    env_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    vec_env: str | None = None
    frame_stack: int = 0
    env_wrappers: tuple[ClassSpec, ...] = ()
    vec_env_wrappers: tuple[ClassSpec, ...] = ()
    normalize_kwargs: dict[str, Any] | None = None
    callbacks: tuple[ClassSpec, ...] = ()


#: The keys whose values name classes to import, and the base class each named class must derive from.
CLASS_KEYS: dict[str, type] = {"env_wrapper": gym.Wrapper, "vec_env_wrapper": VecEnvWrapper, "callback": BaseCallback}


def named_classes(hyperparams: dict[str, Any]) -> list[str]:
    """``"<key>: <dotted name>"`` for each class an entry names by import path (nothing is imported to list them)."""
    return [
        f"{key}: {name}" for key in CLASS_KEYS for name, _ in class_entries(hyperparams.get(key), key) if isinstance(name, str)
    ]


def _check_import_origin(module_name: str, name: str, key: str, refused: tuple[pathlib.Path, ...]) -> None:
    """
    Refuse, before it is imported, a module whose top-level package would come from one of the ``refused`` folders
    (found there through ``sys.path``: ``''`` or the working directory that ``python -m`` puts first, a model's
    folder...). Only where the package lies is looked up (``importlib.util.find_spec`` of the top-level name, which
    runs none of its code); an installed package or one imported already is not affected.
    """
    top = module_name.partition(".")[0]
    module = sys.modules.get(top)
    if module is not None:
        # Imported already, so nothing of it runs again; a namespace package can still find new portions, though.
        locations = [str(location) for location in getattr(module, "__path__", [])]
    else:
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            return  # the import below fails, with its own message
        if spec is None:
            return
        locations = list(spec.submodule_search_locations or [])
        if not locations and spec.has_location and spec.origin is not None:
            locations = [spec.origin]
    for location in locations:
        folder = pathlib.Path(location).resolve().parent
        if folder in refused:
            raise ConfigError(
                f"{name!r} would be imported from {folder}, and a weights-only load imports nothing from the model's "
                "folder or the working directory: install the module that defines it, or load the model in full "
                "if you trust its files",
                key=key,
            )


def _import_class(name: str | type, base: type, key: str, refused: tuple[pathlib.Path, ...] = ()) -> type:
    """The class that ``name`` (``package.module.Class``) stands for, if it is a subclass of ``base``."""
    if isinstance(name, str):
        module_name, _, attribute = name.rpartition(".")
        _check_import_origin(module_name, name, key, refused)
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # ImportError, or whatever the module's own top-level code raised
            raise ConfigError(f"cannot import module {module_name!r} of {name!r}: {err}", key=key) from None
        if not hasattr(module, attribute):
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r} (in {name!r})", key=key)
        obj = getattr(module, attribute)
    else:
        obj = name
    # Check the kind before anything is called: a function (os.system, builtins.eval) or an unrelated class
    # (subprocess.Popen) is refused here and never reaches an env or a callback list.
    if not isinstance(obj, type) or not issubclass(obj, base):
        what = f"class {obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else type(obj).__name__
        raise ConfigError(f"{name!r} is not a subclass of {base.__module__}.{base.__qualname__} (it is a {what})", key=key)
    if inspect.isabstract(obj):
        raise ConfigError(f"{name!r} is an abstract class", key=key)
    return obj


def _check_signature(cls: type, positional: tuple[Any, ...], kwargs: dict[str, Any], name: str, key: str) -> None:
    """Fail now, with the config's names, if ``cls(*positional, **kwargs)`` cannot bind its arguments."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # no introspectable signature (e.g. a C extension type): let the call decide
        return
    try:
        signature.bind(*positional, **kwargs)
    except TypeError as err:
        raise ConfigError(f"invalid keyword arguments for {name!r}: {err}", key=key) from None


def resolve_classes(
    value: Any, key: str, base: type, n_positional: int = 0, refuse_imports_from: tuple[pathlib.Path, ...] = ()
) -> tuple[ClassSpec, ...]:
    """
    Import and check the classes of a zoo class key (``env_wrapper``, ``vec_env_wrapper``, ``callback``).

    :param value: the key's value, in any form :func:`sb3_parallel_dqn.zoo.hyperparams.class_entries` accepts
    :param key: the hyperparameter, for error messages
    :param base: the class every named class must derive from
    :param n_positional: positional arguments the class receives besides the keyword arguments (1 for a wrapper: the
        env), used to check the keyword arguments against its signature
    :param refuse_imports_from: folders (resolved) that no named module may be imported from
    :return: the resolved classes with their keyword arguments, in the order given
    :raises ConfigError: for a malformed value, a module that cannot be imported (or only from a refused folder), a
        missing attribute, an object that is not a subclass of ``base``, or keyword arguments the class does not take
    """
    specs = []
    for name, kwargs in class_entries(value, key):
        cls = _import_class(name, base, key, refuse_imports_from)
        label = name if isinstance(name, str) else f"{cls.__module__}.{cls.__qualname__}"
        _check_signature(cls, (None,) * n_positional, kwargs, label, key)
        specs.append(ClassSpec(label, cls, kwargs))
    return tuple(specs)


def split_hyperparams(
    hyperparams: dict[str, Any], *, refuse_imports_from: tuple[str | os.PathLike[str], ...] = ()
) -> tuple[dict[str, Any], EnvSettings]:
    """
    Split a converted entry (from :func:`sb3_parallel_dqn.zoo.hyperparams.load_hyperparams`) into the keyword
    arguments of ``ParallelDQN`` and the :class:`EnvSettings` of the run.

    ``env_wrapper``, ``vec_env_wrapper`` and ``callback`` are resolved here (see the module docstring), so that a bad
    name fails before any env is built. ``normalize`` becomes ``VecNormalize`` keyword arguments; as in the zoo,
    the entry's ``gamma``, when it has one, replaces theirs, so that rewards are normalised with the discount the
    model uses. A :class:`~sb3_parallel_dqn.FrameReplayBuffer` gets the entry's ``frame_stack`` (unless
    ``replay_buffer_kwargs`` name one). ``scaling`` applies its rule (:func:`sb3_parallel_dqn.scaling.scale_to_world`)
    for this job's data-parallel ranks to values tuned for ``tuned_world_size``.

    :param hyperparams: the converted entry; not modified
    :param refuse_imports_from: folders no class key may import a module from (see :func:`_check_import_origin`): a
        weights-only load gives the model's folder and the working directory, so that no code that came with the
        model runs
    :return: the model's keyword arguments and the env settings
    :raises ConfigError: for a class key that does not resolve to a class of the right kind
    """
    refused = tuple(pathlib.Path(folder).resolve() for folder in refuse_imports_from)
    model_kwargs = dict(hyperparams)
    normalize = model_kwargs.pop("normalize", False)
    normalize_kwargs = None
    # Not ``if normalize``: as in the zoo, an empty dict of arguments still turns normalisation on.
    if normalize is True or isinstance(normalize, dict):
        normalize_kwargs = dict(normalize) if isinstance(normalize, dict) else {}
        if "gamma" in model_kwargs:
            normalize_kwargs["gamma"] = model_kwargs["gamma"]
    settings = EnvSettings(
        n_timesteps=model_kwargs.pop("n_timesteps", None),
        n_envs=model_kwargs.pop("n_envs", 1),
        policy=model_kwargs.pop("policy", "MlpPolicy"),
        env_kwargs=model_kwargs.pop("env_kwargs", None) or {},
        vec_env=model_kwargs.pop("vec_env", None),
        frame_stack=model_kwargs.pop("frame_stack", 0) or 0,
        env_wrappers=resolve_classes(model_kwargs.pop("env_wrapper", None), "env_wrapper", gym.Wrapper, 1, refused),
        vec_env_wrappers=resolve_classes(
            model_kwargs.pop("vec_env_wrapper", None), "vec_env_wrapper", VecEnvWrapper, 1, refused
        ),
        normalize_kwargs=normalize_kwargs,
        callbacks=resolve_classes(model_kwargs.pop("callback", None), "callback", BaseCallback, 0, refused),
    )
    scaling, tuned_world_size = model_kwargs.pop("scaling", "none"), model_kwargs.pop("tuned_world_size", 1)
    if scaling != "none":
        # As the launcher announced the job: no collective here (evaluation and checks call this on one rank).
        ranks = (comm.launcher_world_size() or comm.world_size()) // int(model_kwargs.get("model_parallel_size", 1))
        try:
            model_kwargs = scale_to_world(model_kwargs, scaling, max(ranks, 1), tuned_world_size)
        except ValueError as error:
            raise ConfigError(str(error), key="scaling") from None
    buffer_class = model_kwargs.get("replay_buffer_class")
    if settings.frame_stack and isinstance(buffer_class, type) and issubclass(buffer_class, FrameReplayBuffer):
        # The buffer stores the frames that VecFrameStack stacks: tell it how many, unless the entry does.
        model_kwargs["replay_buffer_kwargs"] = {
            "frame_stack": settings.frame_stack,
            **model_kwargs.get("replay_buffer_kwargs", {}),
        }
    return model_kwargs, settings


def register_optional_envs(env_id: str | None = None) -> None:
    """
    Register the envs of the optional packages that are installed (ale-py's Atari games, MinAtar's games) with
    gymnasium, as ``rl_zoo3.import_envs`` does. Call it before looking up such an id (``gym.spec``,
    :func:`sb3_parallel_dqn.zoo.hyperparams.is_atari`, ``load_hyperparams``). With ``env_id``, only what that id
    needs (MinAtar's package imports pandas and seaborn: not for every CartPole run). See
    :func:`sb3_parallel_dqn.envs.register_env_packages`, which env workers call for themselves.
    """
    register_env_packages(env_id)


def wrap_vec_env(
    env: VecEnv, settings: EnvSettings, *, eval_env: bool = False, vecnormalize_path: str | os.PathLike[str] | None = None
) -> VecEnv:
    """
    Apply the zoo's vectorised wrappers to ``env``: ``vec_env_wrapper``, ``VecNormalize``, ``VecFrameStack`` and
    ``VecTransposeImage``, in this order (``ExperimentManager.create_envs``).

    ``VecNormalize`` is loaded from ``vecnormalize_path`` when that file exists (statistics and settings saved by
    :func:`sb3_parallel_dqn.io.checkpoints.save_vecnormalize`), as the zoo does whatever ``normalize`` says; else it
    is made from ``settings.normalize_kwargs``. In an eval env it neither updates its statistics nor normalises rewards; they
    follow the training env's statistics only when loaded or synchronised (``EvalCallback`` does that).

    :param env: the envs with their per-env wrappers
    :param settings: the run's settings
    :param eval_env: whether ``env`` is for evaluation
    :param vecnormalize_path: a ``vecnormalize.pkl`` to load if it exists, or None
    :return: the wrapped envs
    :raises FileNotFoundError: when ``vecnormalize_path`` is given, does not exist and the entry normalises: fresh
        statistics would silently change what a resumed or evaluated model sees
    """
    for spec in settings.vec_env_wrappers:
        env = spec.make(env)
    if vecnormalize_path is not None and not os.path.exists(vecnormalize_path):
        if settings.normalize_kwargs is not None:
            raise FileNotFoundError(f"no VecNormalize statistics at {os.fspath(vecnormalize_path)!r}")
        vecnormalize_path = None
    if vecnormalize_path is not None:
        loaded = VecNormalize.load(os.fspath(vecnormalize_path), env)
        if eval_env:
            loaded.training = False
            loaded.norm_reward = False
        env = loaded
    elif settings.normalize_kwargs is not None:
        kwargs = dict(settings.normalize_kwargs)
        if eval_env:
            kwargs.update(training=False, norm_reward=False)
        env = VecNormalize(env, **kwargs)
    if settings.frame_stack:
        env = VecFrameStack(env, settings.frame_stack)
    if not is_vecenv_wrapped(env, VecTransposeImage) and _needs_transpose(env.observation_space):
        env = VecTransposeImage(env)
    return env


def _needs_transpose(space: spaces.Space) -> bool:
    # As the zoo: a Dict space is transposed if any of its image spaces is channel-last.
    subspaces = space.spaces.values() if isinstance(space, spaces.Dict) else [space]
    return any(is_image_space(sub) and not is_image_space_channels_first(sub) for sub in subspaces)  # type: ignore[arg-type]


def make_train_env(
    env_id: str,
    settings: EnvSettings,
    seed: int | None,
    monitor_dir: str | None = None,
    *,
    vecnormalize_path: str | os.PathLike[str] | None = None,
    vec_env_kwargs: dict[str, Any] | None = None,
    model_parallel_size: int = 1,
) -> VecEnv:
    """
    This rank's training envs: ``settings.n_envs`` of them, rank-offset seeds and monitor files, wrapped as the zoo
    wraps them (see the module docstring).

    Under MPI every rank normalises with its own running ``VecNormalize`` statistics: all ranks' envs are i.i.d.
    copies of the same env, so the statistics agree up to sampling noise, and rank 0's are the ones saved by
    :func:`sb3_parallel_dqn.io.checkpoints.save_vecnormalize` and used for evaluation.

    :param env_id: the env id
    :param settings: from :func:`split_hyperparams`
    :param seed: the global seed; env ``i`` of rank ``r`` gets ``seed + r * n_envs + i``
    :param monitor_dir: folder of the monitor files ``<rank>.<i>.monitor.csv``; None writes none
    :param vecnormalize_path: ``VecNormalize`` statistics to resume from (``<run dir>/<env id>/vecnormalize.pkl`` of
        an earlier run), loaded if the file exists (see :func:`wrap_vec_env`); None starts fresh ones when the entry
        asks for ``normalize``
    :param vec_env_kwargs: keyword arguments of the ``VecEnv`` class, e.g. ``{"start_method": "spawn"}``
    :param model_parallel_size: the model's (its replicas count in the seeds, see ``make_parallel_vec_env``)
    :return: the wrapped envs
    """
    env = make_parallel_vec_env(
        env_id,
        n_envs=settings.n_envs,
        seed=seed,
        monitor_dir=monitor_dir,
        wrapper_class=EnvWrappers(settings.env_wrappers) if settings.env_wrappers else None,
        env_kwargs=settings.env_kwargs,
        vec_env_cls=settings.vec_env,
        vec_env_kwargs=vec_env_kwargs,
        model_parallel_size=model_parallel_size,
    )
    return wrap_vec_env(env, settings, vecnormalize_path=vecnormalize_path)


def make_eval_env(
    env_id: str, settings: EnvSettings, seed: int | None, *, vecnormalize_path: str | os.PathLike[str] | None = None
) -> VecEnv:
    """
    One env in this process for evaluation, wrapped as for training, without a monitor file.

    With ``normalize``, its ``VecNormalize`` neither updates statistics nor normalises rewards. Pass
    ``vecnormalize_path`` to evaluate a saved model with its run's statistics; during training, ``EvalCallback``
    copies the training env's statistics into it before each evaluation.

    :param env_id: the env id
    :param settings: from :func:`split_hyperparams`
    :param seed: the env's seed
    :param vecnormalize_path: saved ``VecNormalize`` statistics, loaded if the file exists (see :func:`wrap_vec_env`),
        or None
    :return: the wrapped env
    """
    env = make_parallel_vec_env(
        env_id,
        n_envs=1,
        seed=seed,
        wrapper_class=EnvWrappers(settings.env_wrappers) if settings.env_wrappers else None,
        env_kwargs=settings.env_kwargs,
        vec_env_cls=DummyVecEnv,
        replica=0,  # the same episodes on every rank that evaluates (see zoo/callbacks.py)
    )
    return wrap_vec_env(env, settings, eval_env=True, vecnormalize_path=vecnormalize_path)


def make_callbacks(settings: EnvSettings) -> list[BaseCallback]:
    """
    New instances of the entry's ``callback`` classes, with their keyword arguments, in the order given.

    The zoo puts them first in the list of callbacks given to ``learn``, before its progress bar, checkpoint and
    evaluation callbacks. They run on every rank; a callback that writes files should be given to rank 0 only.
    """
    return [spec.make() for spec in settings.callbacks]
