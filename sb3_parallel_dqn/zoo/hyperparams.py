"""
Hyperparameter loading in the format of rl-baselines3-zoo's ``hyperparams/dqn.yml``, without ``eval``.

The zoo stores some values as Python expressions in strings (``policy_kwargs: "dict(net_arch=[256, 256])"``) and
turns them into objects with ``eval``. A config file is user input, and under MPI every rank would run it, so
here those strings go through :func:`parse_literal` instead: a small walker over the ``ast`` of the expression
that accepts literals, ``dict(...)`` calls with keyword arguments and a fixed allow-list of names
(:data:`ALLOWED_NAMES`), and rejects everything else. Nothing from a config file is ever executed or imported here.

The class keys ``env_wrapper``, ``vec_env_wrapper`` and ``callback`` name classes by their import path, as in the
zoo. This module only checks their form (see :func:`class_entries`); :func:`sb3_parallel_dqn.zoo.envs.split_hyperparams`
imports the named module and accepts the object only if it is a class of the expected kind.

:func:`load_hyperparams` picks the entry for an environment (its own id, else ``atari`` for Atari ids, else
``default``), applies command-line overrides, converts the values to what ``DQN``/``ParallelDQN`` expects and
checks their ranges, so that a typo or an out-of-range value fails before any process starts training.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch as th
import yaml
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecNormalize

from sb3_parallel_dqn import validation
from sb3_parallel_dqn.buffers.frame import FrameReplayBuffer, PrioritizedFrameReplayBuffer
from sb3_parallel_dqn.buffers.prioritized import PrioritizedReplayBuffer
from sb3_parallel_dqn.policies import MinAtarCNN
from sb3_parallel_dqn.scaling import SCALING_MODES
from sb3_parallel_dqn.validation import ConfigError

__all__ = ["ConfigError", "Entry", "load_entry", "load_hyperparams", "parse_literal", "parse_override"]

# Shipped inside the package, so that a non-editable install has it too; the repository's zoo_configs/dqn.yml is a
# link to this file.
DEFAULT_CONF_FILE = Path(__file__).resolve().parent / "configs" / "dqn.yml"


def _allowed_names() -> dict[str, object]:
    """
    Build the allow-list: activation classes, optimizers, SB3 replay buffers (and ours) and SB3 feature extractors,
    under their usual spellings.
    """
    activations = "ReLU ReLU6 Tanh ELU SELU LeakyReLU SiLU GELU Mish Sigmoid Softplus Identity".split()
    optimizers = "Adam AdamW RMSprop SGD".split()
    names: dict[str, object] = {}
    for prefix in ("nn.", "th.nn.", "torch.nn."):
        names.update({prefix + name: getattr(th.nn, name) for name in activations})
    for prefix in ("th.optim.", "torch.optim."):
        names.update({prefix + name: getattr(th.optim, name) for name in optimizers})
    for buffer_class in (ReplayBuffer, DictReplayBuffer, NStepReplayBuffer):
        names[buffer_class.__name__] = buffer_class
        names[f"stable_baselines3.common.buffers.{buffer_class.__name__}"] = buffer_class
    for spelling in ("", "sb3_parallel_dqn.", "sb3_parallel_dqn.buffers.prioritized."):
        names[f"{spelling}PrioritizedReplayBuffer"] = PrioritizedReplayBuffer
    for spelling in ("", "sb3_parallel_dqn.", "sb3_parallel_dqn.buffers.frame."):
        names[f"{spelling}FrameReplayBuffer"] = FrameReplayBuffer
        names[f"{spelling}PrioritizedFrameReplayBuffer"] = PrioritizedFrameReplayBuffer
    # ``policy_kwargs: "dict(features_extractor_class=NatureCNN)"``.
    for extractor_class in (NatureCNN, FlattenExtractor, CombinedExtractor):
        names[extractor_class.__name__] = extractor_class
        names[f"stable_baselines3.common.torch_layers.{extractor_class.__name__}"] = extractor_class
    for spelling in ("", "sb3_parallel_dqn.", "sb3_parallel_dqn.policies."):
        names[f"{spelling}MinAtarCNN"] = MinAtarCNN
    return names


#: Every dotted name a config expression may reference, mapped to the object it stands for. ``True``, ``False``
#: and ``None`` are constants of the Python grammar and are always accepted.
ALLOWED_NAMES: dict[str, object] = _allowed_names()

_BUFFER_CLASSES: dict[str, object] = {
    name: obj for name, obj in ALLOWED_NAMES.items() if isinstance(obj, type) and issubclass(obj, ReplayBuffer)
}


def _dotted_name(node: ast.expr) -> str | None:
    """``nn.ReLU`` for ``Attribute(Name('nn'), 'ReLU')``; ``None`` if the chain holds anything but names."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


class _LiteralWalker:
    """Turn an expression tree into a value, accepting only a whitelist of node types (see :func:`parse_literal`)."""

    def __init__(self, text: str, key: str) -> None:
        self.text = text
        self.key = key

    def reject(self, node: ast.AST, why: str) -> ConfigError:
        segment = ast.get_source_segment(self.text, node) or self.text
        where = f"{segment!r} in {self.text!r}" if segment != self.text else repr(self.text)
        return ConfigError(f"{why}: {where}", key=self.key)

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            # bytes, Ellipsis and complex numbers have no use in a config and are refused.
            if node.value is None or isinstance(node.value, (bool, int, float, str)):
                return node.value
            raise self.reject(node, "unsupported constant")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            operand = node.operand
            if not (
                isinstance(operand, ast.Constant)
                and isinstance(operand.value, (int, float))
                and not isinstance(operand.value, bool)
            ):
                raise self.reject(node, "unary +/- only applies to a number")
            return -operand.value if isinstance(node.op, ast.USub) else operand.value
        if isinstance(node, ast.List):
            return [self.value(item) for item in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.value(item) for item in node.elts)
        if isinstance(node, ast.Dict):
            return self.dict_display(node)
        if isinstance(node, ast.Call):
            return self.dict_call(node)
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = _dotted_name(node)
            if name is None or name not in ALLOWED_NAMES:
                raise self.reject(node, "name not in the allow-list (see hyperparams.ALLOWED_NAMES)")
            return ALLOWED_NAMES[name]
        # Everything else (binary operators, subscripts, lambdas, comprehensions, f-strings, starred items, ...)
        # is refused by default: the grammar accepted here is deliberately tiny.
        raise self.reject(node, f"unsupported expression ({type(node).__name__})")

    def dict_display(self, node: ast.Dict) -> dict[Any, Any]:
        result = {}
        for key_node, value_node in zip(node.keys, node.values, strict=True):
            if key_node is None:  # ``{**other}``
                raise self.reject(value_node, "dict unpacking is not allowed")
            key = self.value(key_node)
            try:
                hash(key)
            except TypeError:
                raise self.reject(key_node, "unhashable dict key") from None
            result[key] = self.value(value_node)
        return result

    def dict_call(self, node: ast.Call) -> dict[str, Any]:
        if not (isinstance(node.func, ast.Name) and node.func.id == "dict"):
            raise self.reject(node, "only dict(...) may be called")
        if node.args:
            raise self.reject(node, "dict(...) takes keyword arguments only")
        result = {}
        for keyword in node.keywords:
            if keyword.arg is None:  # ``dict(**other)``
                raise self.reject(node, "dict(**...) unpacking is not allowed")
            result[keyword.arg] = self.value(keyword.value)
        return result


def parse_literal(text: str, *, key: str = "<value>") -> Any:
    """
    Parse a zoo-style Python expression string without ``eval``.

    ``"dict(net_arch=[256, 256], activation_fn=nn.ReLU)"`` gives ``{"net_arch": [256, 256], "activation_fn":
    torch.nn.ReLU}``. Accepted: ``int``/``float``/``str``/``bool``/``None`` constants, unary ``+``/``-`` on a number,
    list, tuple and dict displays, ``dict(...)`` called with keyword arguments only (nested freely), and the dotted
    names of :data:`ALLOWED_NAMES`. Anything else (other calls, other names or attributes, operators, subscripts,
    lambdas, comprehensions, f-strings, sets, ``**`` unpacking) raises :class:`ConfigError`.

    :param text: the expression
    :param key: the hyperparameter the text belongs to, used in error messages
    :return: the value
    :raises ConfigError: naming ``key`` and quoting the offending part of ``text``
    """
    if not isinstance(text, str):
        raise ConfigError(f"expected an expression string, got {type(text).__name__} {text!r}", key=key)
    try:
        # mode="eval" admits a single expression only, so statements (import, assignments, ...) are syntax errors.
        tree = ast.parse(text.strip(), mode="eval")
        return _LiteralWalker(text.strip(), key).value(tree.body)
    except (SyntaxError, ValueError) as err:  # ValueError: null bytes in the source
        raise ConfigError(f"invalid expression {text!r}: {err}", key=key) from None
    except (RecursionError, MemoryError):
        # Pathological nesting (thousands of unary minus or attribute dots) exhausts the parser, not the machine.
        raise ConfigError(f"expression nested too deeply: {text[:80]!r}...", key=key) from None


def linear_schedule(initial_value: float) -> Callable[[float], float]:
    """
    Linear schedule from ``initial_value`` (at ``progress_remaining == 1``) to 0, as the zoo's ``lin_<x>``.

    It is SB3's own ``LinearSchedule``: models saved with it load with stock SB3, without this package.

    :param initial_value: value at the start of training
    :return: a picklable callable ``progress_remaining -> progress_remaining * initial_value``
    """
    return LinearSchedule(float(initial_value), 0.0, 1.0)


def is_atari(env_id: str) -> bool:
    """
    Whether ``env_id`` is registered with an Atari entry point (one that mentions ``ale_py`` or ``atari``).

    Only gymnasium's registry is consulted: ``ale_py`` is not imported here (it is optional and slow to import),
    so Atari ids are only recognised once the caller has registered them, e.g. with
    ``gymnasium.register_envs(ale_py)``. Unknown ids give ``False``.
    """
    spec = gym.envs.registration.registry.get(env_id)
    if spec is None:
        return False
    entry_point = spec.entry_point
    if not isinstance(entry_point, str):  # a callable: judge it by where it is defined
        entry_point = f"{getattr(entry_point, '__module__', '')}.{getattr(entry_point, '__qualname__', '')}"
    return "ale_py" in entry_point or "atari" in entry_point.lower()


# --- conversion of the zoo's own forms; each raises ConfigError(reason) and the caller adds file/entry/key ---------


def _learning_rate(value: Any) -> float | Callable[[float], float]:
    if isinstance(value, str):
        if not value.startswith("lin_"):
            raise ConfigError(f"expected a number or 'lin_<initial value>', got {value!r}")
        try:
            initial = float(value[len("lin_") :])
        except ValueError:
            raise ConfigError(f"cannot read the initial value of {value!r}") from None
        return linear_schedule(validation.float_in(lambda v: v > 0, "> 0")(initial))
    return validation.learning_rate(value)


def _kwargs_dict(key: str) -> Callable[[Any], dict[str, Any]]:
    def convert(value: Any) -> dict[str, Any]:
        parsed = parse_literal(value, key=key) if isinstance(value, str) else value
        if not isinstance(parsed, dict):
            raise ConfigError(f'expected a dict or a "dict(...)" string, got {value!r}')
        return parsed

    return convert


def _replay_buffer_class(value: Any) -> object:
    if isinstance(value, type) and value in _BUFFER_CLASSES.values():
        return value
    if not isinstance(value, str) or value not in _BUFFER_CLASSES:
        raise ConfigError(f"expected one of {sorted(_BUFFER_CLASSES)}, got {value!r}")
    return _BUFFER_CLASSES[value]


def _one_of(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"expected one of {list(choices)}, got {value!r}")
        return str(value)

    return convert


def _check_plain(value: Any, what: str, _seen: set[int] | None = None) -> None:
    """
    Raise unless ``value`` is built from YAML scalars, lists and mappings with string keys (no objects).

    Each list or mapping is checked once, however often it occurs: YAML aliases share one object between their
    uses, and a walk that followed every use would take time exponential in the nesting of the aliases.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    seen = set() if _seen is None else _seen
    if isinstance(value, (list, tuple, dict)):
        if id(value) in seen:
            return
        seen.add(id(value))
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, what, seen)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{what}: keys must be strings, got {type(key).__name__} {key!r}")
            _check_plain(item, what, seen)
        return
    raise ConfigError(
        f"{what}: expected plain values (numbers, strings, booleans, null, lists, mappings), "
        f"got {type(value).__name__} {value!r}"
    )


_VEC_NORMALIZE_ARGS = frozenset(inspect.signature(VecNormalize).parameters) - {"venv"}


def _normalize(value: Any) -> bool | dict[str, Any]:
    # The zoo accepts a bool, or VecNormalize's keyword arguments as a dict or a "dict(norm_obs=True, ...)" string;
    # null reads as False there too.
    parsed = parse_literal(value, key="normalize") if isinstance(value, str) else value
    if parsed is None:
        return False
    if not isinstance(parsed, (bool, dict)):
        raise ConfigError(f'expected a bool, or a dict or "dict(...)" string of VecNormalize arguments, got {value!r}')
    if isinstance(parsed, dict):
        _check_plain(parsed, "VecNormalize arguments")
        unknown = sorted(set(parsed) - _VEC_NORMALIZE_ARGS)
        if unknown:
            raise ConfigError(f"unknown VecNormalize argument(s) {unknown}; expected some of {sorted(_VEC_NORMALIZE_ARGS)}")
    return parsed


# ``pkg.module.Name``: a module path and an attribute, each part a Python identifier. This is only a check of the
# form; leading dots (relative imports), spaces and calls never get as far as an import.
_DOTTED_NAME = re.compile(r"[^\W\d]\w*(?:\.[^\W\d]\w*)+")


def class_entries(value: Any, key: str) -> list[tuple[str | type, dict[str, Any]]]:
    """
    The classes and keyword arguments named by a zoo class key: ``env_wrapper``, ``vec_env_wrapper`` or ``callback``.

    The forms are the zoo's (``rl_zoo3.utils.get_wrapper_class``/``get_callback_list``): ``None`` for nothing; a
    dotted name ``pkg.module.Class``; a one-item mapping ``{pkg.module.Class: {keyword: value, ...}}``; or a list
    whose items are either. Keyword arguments must be a mapping of plain YAML values. A class object (not something
    YAML can produce) stands for itself. Only the form is checked here: nothing is imported.

    :param value: the value of ``key`` in an entry
    :param key: the hyperparameter, used in error messages
    :return: ``(dotted name or class, keyword arguments)`` pairs, in the order given
    :raises ConfigError: naming ``key`` and quoting the offending part of ``value``
    """
    if value is None:
        return []
    entries: list[tuple[str | type, dict[str, Any]]] = []
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, dict):
            if len(item) != 1:
                raise ConfigError(
                    f"expected a one-item mapping {{<dotted.Name>: {{<keyword arguments>}}}}, got {item!r} "
                    "(check the indentation)",
                    key=key,
                )
            ((name, kwargs),) = item.items()
        else:
            name, kwargs = item, {}
        if not isinstance(name, type) and not (isinstance(name, str) and _DOTTED_NAME.fullmatch(name)):
            raise ConfigError(f"expected a dotted class name such as 'package.module.Class', got {name!r}", key=key)
        if not isinstance(kwargs, dict):
            raise ConfigError(
                f"the keyword arguments of {name!r} must be a mapping, got {type(kwargs).__name__} {kwargs!r}", key=key
            )
        try:
            _check_plain(kwargs, f"keyword arguments of {name!r}")
        except ConfigError as err:
            raise ConfigError(err.reason, key=key) from None
        entries.append((name, dict(kwargs)))
    return entries


def _class_key(key: str) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        # Checked here so that a malformed value is reported with its file and entry; kept as written, so that the
        # run's saved config is still a valid zoo entry. zoo.envs.split_hyperparams resolves the names.
        class_entries(value, key)
        return value

    return convert


# One converter per known key. Keys meant for the training script rather than the model (n_timesteps, n_envs,
# policy, frame_stack, env_wrapper, normalize, vec_env_wrapper, callback, env_kwargs, vec_env) are converted and
# checked too, but importing wrappers or callbacks is left to zoo.envs.split_hyperparams.
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    **validation.ARGUMENT_RULES,
    "n_timesteps": validation.int_at_least(1),
    "policy": validation.of_type(str),
    "policy_kwargs": _kwargs_dict("policy_kwargs"),
    "replay_buffer_kwargs": _kwargs_dict("replay_buffer_kwargs"),
    "env_kwargs": _kwargs_dict("env_kwargs"),
    "learning_rate": _learning_rate,
    "replay_buffer_class": _replay_buffer_class,
    # The zoo treats a false-y frame_stack as "no frame stacking", hence 0 is allowed.
    "frame_stack": validation.int_at_least(0),
    "env_wrapper": _class_key("env_wrapper"),
    "normalize": _normalize,
    "vec_env_wrapper": _class_key("vec_env_wrapper"),
    "callback": _class_key("callback"),
    "vec_env": _one_of("subproc", "dummy"),
    # The rule for other world sizes (sb3_parallel_dqn.scaling), and the data-parallel ranks the entry was tuned for
    "scaling": _one_of(*SCALING_MODES),
    "tuned_world_size": validation.int_at_least(1),
}

#: Every key a hyperparameter entry may hold.
KNOWN_KEYS: frozenset[str] = frozenset(_CONVERTERS)


#: The most nodes (scalars, lists, mappings) a hyperparameter file may hold once its aliases are expanded, each use
#: of an alias counted with everything under its anchor. The package's own ``dqn.yml`` has about 450. A file over it
#: (e.g. nine levels of nine aliases, a "billion laughs": a few hundred bytes that expand to 9**9 items) is refused
#: before any value is built or walked, in time linear in the file's size. Set it higher for a larger file.
MAX_YAML_NODES = 100_000


class _BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's ``SafeLoader`` that refuses a document over :data:`MAX_YAML_NODES` or with a recursive alias."""

    def compose_document(self) -> yaml.Node | None:
        node = super().compose_document()
        if node is not None:
            _check_expanded_size(node, MAX_YAML_NODES)
        return node


def _check_expanded_size(root: yaml.Node, limit: int) -> None:
    """Raise unless the node graph ``root`` expands to at most ``limit`` nodes; each node is sized once (memo)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise ConfigError("a YAML alias refers to a node that contains it (a recursive structure)")
        open_nodes.add(id(node))
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [item for pair in node.value for item in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                raise ConfigError(
                    f"more than {limit} values once its aliases are expanded (hyperparams.MAX_YAML_NODES); "
                    "is it a YAML alias bomb?"
                )
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        return total

    size(root)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read the hyperparameter file: {err.strerror or err}", file=path) from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"not a UTF-8 text file ({err.reason} at byte {err.start})", file=path) from None
    try:
        data = yaml.load(text, Loader=_BoundedSafeLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML: {err}", file=path) from None
    except ConfigError as err:
        raise ConfigError(err.reason, file=path) from None
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", file=path) from None
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of entries at the top level, got {type(data).__name__}", file=path)
    return data


def _select_entry(data: dict[str, Any], env_id: str, path: Path) -> str:
    if env_id in data:
        return env_id
    if "atari" in data and is_atari(env_id):
        return "atari"
    if "default" in data:
        return "default"
    raise ConfigError(f"no entry for '{env_id}' and no 'default' entry (entries: {sorted(map(str, data))})", file=path)


def load_raw_entry(env_id: str, conf_file: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], str]:
    """
    The entry of ``env_id`` as written in the file (own entry, else ``atari``, else ``default``), unconverted: what
    a run folder's ``config.yml`` stores, so that it reads back through :func:`load_hyperparams`.

    :return: the entry's keys and values, and the entry's name
    :raises ConfigError: for a missing or invalid file, or no applicable entry
    """
    path = Path(DEFAULT_CONF_FILE if conf_file is None else conf_file)
    data = _read_yaml(path)
    section = _select_entry(data, env_id, path)
    entry = data[section] if data[section] is not None else {}  # an entry with no keys reads as None
    if not isinstance(entry, dict):
        raise ConfigError(f"expected a mapping of hyperparameters, got {type(entry).__name__}", file=path, entry=section)
    return dict(entry), section


@dataclasses.dataclass(frozen=True)
class Entry:
    """
    A config entry, read once: as written (what a run folder's ``config.yml`` stores, so that it reads back through
    :func:`load_hyperparams`) and converted.

    :param raw: the entry's keys and values as in the file, with the overrides (as given) applied
    :param hyperparams: the same, converted and checked
    :param section: the entry's name (the env id, ``atari`` or ``default``)
    :param file: the file it came from
    """

    raw: dict[str, Any]
    hyperparams: dict[str, Any]
    section: str
    file: Path


def load_entry(
    env_id: str,
    conf_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    raw_overrides: dict[str, Any] | None = None,
) -> Entry:
    """
    Read the hyperparameters of ``env_id`` from a zoo-format YAML file, converted and checked.

    The entry is ``env_id``'s own, else ``atari`` when :func:`is_atari` says so and the file has one, else
    ``default``. ``overrides`` (already-parsed values, e.g. from :func:`parse_override`) replace the entry's values
    before conversion, so they get the same checks. Conversions: integer keys accept integral floats
    (``!!float 1e5``); ``learning_rate: lin_<x>`` becomes :func:`linear_schedule`; a ``train_freq`` list becomes a tuple;
    ``*_kwargs`` strings go through :func:`parse_literal`; ``replay_buffer_class`` names an SB3 buffer,
    ``PrioritizedReplayBuffer``, ``FrameReplayBuffer`` or ``PrioritizedFrameReplayBuffer``; ``normalize`` becomes a
    bool or a dict of ``VecNormalize`` arguments;
    ``env_wrapper``, ``vec_env_wrapper`` and ``callback`` are checked by :func:`class_entries` but kept as written;
    ``n_envs`` defaults to 1. Script-level keys (``n_timesteps``, ``n_envs``, ``policy``, ``frame_stack``,
    ``env_wrapper``, ``normalize``, ``vec_env_wrapper``, ``callback``, ``env_kwargs``, ``vec_env``) stay in the
    result: :func:`sb3_parallel_dqn.zoo.envs.split_hyperparams` takes them out before the model is built.

    :param env_id: the gymnasium environment id
    :param conf_file: the YAML file; defaults to the package's ``zoo/configs/dqn.yml``
    :param overrides: values that replace (or add to) those of the entry
    :param raw_overrides: the overrides as a YAML file would hold them (see
        :func:`sb3_parallel_dqn.zoo.run_folder.yaml_value`), for :attr:`Entry.raw`; default: ``overrides``
    :return: the entry
    :raises ConfigError: for a missing or invalid file, no applicable entry, an unknown key (with the closest known
        one as a suggestion) or a value of the wrong type or out of range
    """
    path = Path(DEFAULT_CONF_FILE if conf_file is None else conf_file)
    entry, section = load_raw_entry(env_id, path)
    raw = {**entry, **(overrides or {})}

    # Check every key before converting any value, so that a typo is reported as such rather than as a
    # consequence (a missing value, a default silently used).
    for key in raw:
        if key not in KNOWN_KEYS:
            close = difflib.get_close_matches(str(key), sorted(KNOWN_KEYS), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(KNOWN_KEYS))}"
            raise ConfigError(f"unknown hyperparameter{hint}", file=path, entry=section, key=str(key))

    hyperparams: dict[str, Any] = {"n_envs": 1}
    for key, value in raw.items():
        try:
            hyperparams[key] = _CONVERTERS[key](value)
        except ConfigError as err:
            raise ConfigError(err.reason, file=path, entry=section, key=key) from None
    raw_entry = {**entry, **(overrides if raw_overrides is None else raw_overrides)} if overrides else entry
    return Entry(raw_entry, hyperparams, section, path)


def load_hyperparams(
    env_id: str, conf_file: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str]:
    """:func:`load_entry`'s converted hyperparameters and the entry's name."""
    entry = load_entry(env_id, conf_file, overrides)
    return entry.hyperparams, entry.section


# A value that is not a Python literal but reads naturally as a plain string on a command line: a policy name,
# "lin_1e-3", a dotted import path, an env id such as "ALE/Pong-v5".
_PLAIN_STRING = re.compile(r"[A-Za-z_][\w.\-/:]*")


def parse_override(item: str) -> tuple[str, Any]:
    """
    Parse one command-line override ``key:value``, as in the zoo's ``-params`` option.

    The value goes through :func:`parse_literal` (numbers, lists, dicts, ``dict(...)``, ``True``/``False``/``None``,
    quoted strings, allowed names); a value that is not a literal but looks like a plain word, such as
    ``MlpPolicy`` or ``lin_1e-3``, is kept as a string. Anything else (``1+1``, ``dict(**x)``, a call) is an error
    rather than a string, so that a mistyped expression is not silently passed on.

    :param item: the ``key:value`` text; only the first ``:`` separates the key
    :return: the key and the parsed value
    :raises ConfigError: when ``:`` or the key is missing, or the value is neither a literal nor a plain word
    """
    key, sep, text = item.partition(":")
    key, text = key.strip(), text.strip()
    if not sep or not key:
        raise ConfigError(f"expected 'key:value', got {item!r}")
    try:
        return key, parse_literal(text, key=key)
    except ConfigError:
        if _PLAIN_STRING.fullmatch(text):
            return key, text
        raise
