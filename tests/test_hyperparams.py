"""Tests for the zoo-style hyperparameter loader (sb3_parallel_dqn.zoo.hyperparams): parsing without eval, entry
fallback, conversions, validation and the repository's zoo_configs/dqn.yml."""

import importlib.util
import pickle
import textwrap
import uuid
from pathlib import Path

import gymnasium as gym
import pytest
import torch as th
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN

from sb3_parallel_dqn.zoo.hyperparams import (
    ALLOWED_NAMES,
    DEFAULT_CONF_FILE,
    ConfigError,
    is_atari,
    linear_schedule,
    load_hyperparams,
    parse_literal,
    parse_override,
)

REPO_CONF = Path(__file__).resolve().parent.parent / "zoo_configs" / "dqn.yml"

SMALL_CONF = """
atari:
  policy: 'CnnPolicy'
  n_timesteps: !!float 1e7
  buffer_size: 10000
default:
  policy: 'MlpPolicy'
  n_timesteps: !!float 1e5
  buffer_size: !!float 1e5
  learning_rate: !!float 1e-4
CartPole-v1:
  policy: 'MlpPolicy'
  n_timesteps: !!float 5e4
  n_envs: 4
  learning_rate: lin_2.3e-3
  batch_size: 64
  train_freq: [4, "step"]
  policy_kwargs: "dict(net_arch=[256, 256], activation_fn=nn.ReLU)"
"""


def write_conf(tmp_path: Path, text: str, name: str = "dqn.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def one_entry(tmp_path: Path, body: str, entry: str = "default") -> Path:
    """A file with a single entry whose keys are ``body`` (one ``key: value`` per line)."""
    lines = "".join(f"  {line}\n" for line in textwrap.dedent(body).strip().splitlines())
    return write_conf(tmp_path, f"{entry}:\n{lines}")


@pytest.fixture
def fake_atari_id():
    """Register an env whose entry point looks like ale_py's, without importing ale_py; deregister afterwards."""
    env_id = f"FakePong{uuid.uuid4().hex[:8]}NoFrameskip-v4"
    gym.register(id=env_id, entry_point="ale_py.env:AtariEnv")
    yield env_id
    del gym.envs.registration.registry[env_id]


# --- entry selection ---------------------------------------------------------------------------------------------


def test_known_id_uses_its_own_entry(tmp_path):
    params, section = load_hyperparams("CartPole-v1", write_conf(tmp_path, SMALL_CONF))
    assert section == "CartPole-v1"
    assert params["n_timesteps"] == 50_000 and isinstance(params["n_timesteps"], int)
    assert params["n_envs"] == 4
    assert params["batch_size"] == 64
    assert params["policy"] == "MlpPolicy"


def test_unknown_classic_id_falls_back_to_default(tmp_path):
    params, section = load_hyperparams("Pendulum-v1", write_conf(tmp_path, SMALL_CONF))
    assert section == "default"
    assert params["policy"] == "MlpPolicy"
    assert params["buffer_size"] == 100_000 and isinstance(params["buffer_size"], int)
    assert params["learning_rate"] == pytest.approx(1e-4) and isinstance(params["learning_rate"], float)
    assert params["n_envs"] == 1  # default when absent


def test_unregistered_id_falls_back_to_default(tmp_path):
    assert not is_atari("NoSuchEnv-v0")
    assert load_hyperparams("NoSuchEnv-v0", write_conf(tmp_path, SMALL_CONF))[1] == "default"


@pytest.mark.skipif(importlib.util.find_spec("ale_py") is None, reason="ale_py not installed")
def test_real_atari_id_uses_atari_entry(tmp_path):
    import ale_py

    gym.register_envs(ale_py)
    assert is_atari("PongNoFrameskip-v4")
    assert load_hyperparams("PongNoFrameskip-v4", write_conf(tmp_path, SMALL_CONF))[1] == "atari"


def test_atari_id_uses_atari_entry(tmp_path, fake_atari_id):
    assert is_atari(fake_atari_id)
    params, section = load_hyperparams(fake_atari_id, write_conf(tmp_path, SMALL_CONF))
    assert section == "atari"
    assert params["policy"] == "CnnPolicy"


def test_atari_id_without_atari_entry_uses_default(tmp_path, fake_atari_id):
    conf = one_entry(tmp_path, "policy: 'MlpPolicy'")
    assert load_hyperparams(fake_atari_id, conf)[1] == "default"


def test_is_atari_false_for_classic_control():
    assert not is_atari("CartPole-v1")


def test_no_applicable_entry(tmp_path):
    conf = one_entry(tmp_path, "policy: 'MlpPolicy'", entry="CartPole-v1")
    with pytest.raises(ConfigError, match=r"no entry for 'Acrobot-v1'") as info:
        load_hyperparams("Acrobot-v1", conf)
    assert str(conf) in str(info.value)


def test_empty_entry_is_allowed(tmp_path):
    params, section = load_hyperparams("CartPole-v1", write_conf(tmp_path, "default:\n"))
    assert (params, section) == ({"n_envs": 1}, "default")


# --- conversions -------------------------------------------------------------------------------------------------


def test_policy_kwargs_parsed(tmp_path):
    params, _ = load_hyperparams("CartPole-v1", write_conf(tmp_path, SMALL_CONF))
    assert params["policy_kwargs"] == {"net_arch": [256, 256], "activation_fn": th.nn.ReLU}
    assert params["policy_kwargs"]["activation_fn"] is th.nn.ReLU


def test_policy_kwargs_dict_passed_through(tmp_path):
    conf = one_entry(tmp_path, "policy_kwargs: {net_arch: [64, 64]}")
    assert load_hyperparams("X-v0", conf)[0]["policy_kwargs"] == {"net_arch": [64, 64]}


def test_linear_schedule_from_yaml(tmp_path):
    params, _ = load_hyperparams("CartPole-v1", write_conf(tmp_path, SMALL_CONF))
    schedule = params["learning_rate"]
    assert callable(schedule)
    assert schedule(1.0) == pytest.approx(2.3e-3)
    assert schedule(0.5) == pytest.approx(1.15e-3)
    assert schedule(0.0) == 0.0
    restored = pickle.loads(pickle.dumps(schedule))
    assert restored(0.5) == pytest.approx(1.15e-3)


def test_linear_schedule_function():
    schedule = linear_schedule(1e-3)
    assert schedule(1.0) == pytest.approx(1e-3)
    assert schedule(0.5) == pytest.approx(5e-4)
    assert pickle.loads(pickle.dumps(schedule))(0.25) == pytest.approx(2.5e-4)


def test_train_freq_list_becomes_tuple(tmp_path):
    params, _ = load_hyperparams("CartPole-v1", write_conf(tmp_path, SMALL_CONF))
    assert params["train_freq"] == (4, "step")
    assert isinstance(params["train_freq"], tuple)


def test_train_freq_int_stays_int(tmp_path):
    assert load_hyperparams("X-v0", one_entry(tmp_path, "train_freq: 16"))[0]["train_freq"] == 16


def test_integral_floats_become_ints(tmp_path):
    conf = one_entry(tmp_path, "buffer_size: !!float 1e5\nlearning_starts: !!float 1e3\nn_timesteps: !!float 2.5e4")
    params, _ = load_hyperparams("X-v0", conf)
    assert params["buffer_size"] == 100_000 and isinstance(params["buffer_size"], int)
    assert params["learning_starts"] == 1000 and isinstance(params["learning_starts"], int)
    assert params["n_timesteps"] == 25_000 and isinstance(params["n_timesteps"], int)


def test_float_fields_become_floats(tmp_path):
    conf = one_entry(tmp_path, "gamma: 1\ntau: 1\nmax_grad_norm: 10\nexploration_final_eps: 0")
    params, _ = load_hyperparams("X-v0", conf)
    for key, value in {"gamma": 1.0, "tau": 1.0, "max_grad_norm": 10.0, "exploration_final_eps": 0.0}.items():
        assert params[key] == value and isinstance(params[key], float), key


def test_replay_buffer_class_and_kwargs(tmp_path):
    conf = one_entry(
        tmp_path, 'replay_buffer_class: DictReplayBuffer\nreplay_buffer_kwargs: "dict(handle_timeout_termination=False)"'
    )
    params, _ = load_hyperparams("X-v0", conf)
    assert params["replay_buffer_class"] is DictReplayBuffer
    assert params["replay_buffer_kwargs"] == {"handle_timeout_termination": False}


def test_script_keys_stay_in_result(tmp_path):
    conf = one_entry(
        tmp_path,
        """
        policy: 'CnnPolicy'
        frame_stack: 4
        env_wrapper: [stable_baselines3.common.atari_wrappers.AtariWrapper]
        env_kwargs: "dict(render_mode=None)"
        vec_env: subproc
        normalize: False
        """,
    )
    params, _ = load_hyperparams("X-v0", conf)
    assert params["frame_stack"] == 4
    assert params["env_wrapper"] == ["stable_baselines3.common.atari_wrappers.AtariWrapper"]
    assert params["env_kwargs"] == {"render_mode": None}
    assert params["vec_env"] == "subproc"
    assert params["normalize"] is False


def test_normalize_forms(tmp_path):
    assert load_hyperparams("X-v0", one_entry(tmp_path, "normalize: null"))[0]["normalize"] is False
    assert load_hyperparams("X-v0", one_entry(tmp_path, "normalize: true"))[0]["normalize"] is True
    params, _ = load_hyperparams("X-v0", one_entry(tmp_path, 'normalize: "dict(norm_obs=False, gamma=0.9)"'))
    assert params["normalize"] == {"norm_obs": False, "gamma": 0.9}


def test_class_keys_kept_as_written(tmp_path):
    # Only their form is checked here: nothing is imported, so a name that does not exist still loads (and
    # zoo_env.split_hyperparams rejects it).
    value = [{"no_such_module.Wrapper": {"n": 1}}, "gymnasium.wrappers.OrderEnforcing"]
    for key in ("env_wrapper", "vec_env_wrapper", "callback"):
        assert load_hyperparams("X-v0", one_entry(tmp_path, "policy: MlpPolicy"), {key: value})[0][key] == value


def test_gradient_steps_minus_one_allowed(tmp_path):
    assert load_hyperparams("X-v0", one_entry(tmp_path, "gradient_steps: -1"))[0]["gradient_steps"] == -1


# --- parse_literal -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dict(net_arch=[256, 256], activation_fn=nn.ReLU)", {"net_arch": [256, 256], "activation_fn": th.nn.ReLU}),
        ("dict(net_arch=dict(pi=[64], qf=[64]))", {"net_arch": {"pi": [64], "qf": [64]}}),
        ("{'a': (1, -2.5), 'b': None, 'c': True}", {"a": (1, -2.5), "b": None, "c": True}),
        ("dict(optimizer_class=th.optim.AdamW, optimizer_kwargs=dict(eps=1e-5))",
         {"optimizer_class": th.optim.AdamW, "optimizer_kwargs": {"eps": 1e-5}}),
        ("torch.nn.Tanh", th.nn.Tanh),
        ("ReplayBuffer", ReplayBuffer),
        ("dict(features_extractor_class=NatureCNN, features_extractor_kwargs=dict(features_dim=256))",
         {"features_extractor_class": NatureCNN, "features_extractor_kwargs": {"features_dim": 256}}),
        ("stable_baselines3.common.torch_layers.CombinedExtractor", CombinedExtractor),
        ("'quoted'", "quoted"),
        ("+3", 3),
        ("[]", []),
    ],
)  # fmt: skip
def test_parse_literal_accepts(text, expected):
    assert parse_literal(text) == expected


def test_allow_list_contents():
    for name in ("nn.ReLU", "th.nn.ReLU", "torch.nn.ReLU", "nn.Tanh", "nn.ELU", "nn.LeakyReLU", "nn.SiLU", "nn.GELU"):
        assert name in ALLOWED_NAMES
    assert ALLOWED_NAMES["th.optim.RMSprop"] is th.optim.RMSprop
    assert ALLOWED_NAMES["torch.optim.SGD"] is th.optim.SGD
    assert "NStepReplayBuffer" in ALLOWED_NAMES
    for extractor in (NatureCNN, FlattenExtractor, CombinedExtractor):
        assert ALLOWED_NAMES[extractor.__name__] is extractor
        assert ALLOWED_NAMES[f"stable_baselines3.common.torch_layers.{extractor.__name__}"] is extractor
    assert not any(name.split(".")[0] in {"os", "sys", "builtins", "subprocess"} for name in ALLOWED_NAMES)


UNSAFE = [
    "open('x')",
    "nn.Module.__subclasses__()",
    "nn.ReLU.__init__",
    "[x for x in ()]",
    "lambda: 0",
    "dict(**{})",
    "dict({'a': 1})",
    "{**{}}",
    "os.system",
    "os",
    "exec",
    "1+1",
    "nn.ReLU()",
    "(1).__class__",
    "[1][0]",
    "{1, 2}",
    "f'{1}'",
    "-True",
    "b'x'",
    "...",
    "import os",
    "x = 1",
    "[*range(3)]",
    "",
]


@pytest.mark.parametrize("text", UNSAFE)
def test_parse_literal_rejects(text):
    with pytest.raises(ConfigError) as info:
        parse_literal(text, key="policy_kwargs")
    assert "policy_kwargs" in str(info.value)


def test_parse_literal_never_executes(tmp_path):
    marker = Path(f"/tmp/pwned-{uuid.uuid4().hex}")
    text = f"__import__('os').system('touch {marker}')"
    with pytest.raises(ConfigError, match="policy_kwargs") as info:
        parse_literal(text, key="policy_kwargs")
    assert "__import__" in str(info.value)  # the offending text is quoted
    assert not marker.exists()

    # Same string through the loader: the error names file, entry and key, and nothing runs either.
    conf = one_entry(tmp_path, f'policy_kwargs: "{text}"', entry="CartPole-v1")
    with pytest.raises(ConfigError) as info:
        load_hyperparams("CartPole-v1", conf)
    message = str(info.value)
    assert str(conf) in message and "CartPole-v1" in message and "policy_kwargs" in message
    assert not marker.exists()


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "-" * 100_000 + "1", "a." * 100_000 + "b"])
def test_parse_literal_deep_nesting_is_config_error(text):
    with pytest.raises(ConfigError):
        parse_literal(text)


# --- validation --------------------------------------------------------------------------------------------------


def test_unknown_key_suggests_closest(tmp_path):
    conf = one_entry(tmp_path, "learning_rat: !!float 1e-3", entry="CartPole-v1")
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'") as info:
        load_hyperparams("CartPole-v1", conf)
    message = str(info.value)
    assert str(conf) in message and "CartPole-v1" in message and "learning_rat" in message
    assert info.value.key == "learning_rat"
    assert info.value.entry == "CartPole-v1"


def test_unknown_key_without_close_match_lists_known(tmp_path):
    with pytest.raises(ConfigError, match=r"known keys:.*batch_size"):
        load_hyperparams("X-v0", one_entry(tmp_path, "zzzzzz: 1"))


@pytest.mark.parametrize(
    "line",
    [
        "buffer_size: 0",
        "batch_size: 0",
        "learning_starts: -1",
        "n_envs: 0",
        "n_timesteps: 0",
        "gamma: 1.01",
        "gamma: -0.1",
        "tau: 1.5",
        "exploration_fraction: 1.5",
        "exploration_final_eps: -0.01",
        "exploration_initial_eps: 2",
        "target_update_interval: 0",
        "gradient_steps: -2",
        "learning_rate: -1e-3",
        "learning_rate: lin_-1e-3",
        "learning_rate: lin_abc",
        "learning_rate: constant_1e-3",
        "learning_rate: 1e-3",  # YAML 1.1: a string, not a float
        "gamma: .nan",
        "max_grad_norm: -1",
        "train_freq: [4, 'minute']",
        "train_freq: 0",
        "replay_buffer_class: nn.ReLU",
        "replay_buffer_class: HerReplayBuffer",
        "policy_kwargs: '[256, 256]'",
        "policy_kwargs: 3",
        "vec_env: threads",
        "optimize_memory_usage: 'yes please'",
        "policy: 3",
        "batch_size: true",
        "normalize: 3",
        "normalize: 'dict(venv=None)'",
        "normalize: {norm_obs: true, normalise_reward: true}",
        "normalize: 'dict(clip_obs=nn.ReLU)'",
        "env_wrapper: 3",
        "env_wrapper: 'os.system(1)'",
        "env_wrapper: AtariWrapper",
        "vec_env_wrapper: [{a.B: 1}]",
        "callback: {a.B: {}, c.D: {}}",
        "callback: [{a.B: {1: 2}}]",
    ],
)
def test_out_of_range_or_wrong_type(tmp_path, line):
    key = line.split(":")[0]
    conf = one_entry(tmp_path, line, entry="CartPole-v1")
    with pytest.raises(ConfigError) as info:
        load_hyperparams("CartPole-v1", conf)
    message = str(info.value)
    assert str(conf) in message and "'CartPole-v1'" in message and f"'{key}'" in message
    assert info.value.key == key


@pytest.mark.parametrize("line", ["buffer_size: 1.5", "batch_size: 64.5", "n_timesteps: !!float 1.5e0", "n_envs: 2.2"])
def test_non_integral_int_fields(tmp_path, line):
    with pytest.raises(ConfigError, match="expected an integer"):
        load_hyperparams("X-v0", one_entry(tmp_path, line))


def test_bare_scientific_notation_hints_at_float_tag(tmp_path):
    with pytest.raises(ConfigError, match="!!float"):
        load_hyperparams("X-v0", one_entry(tmp_path, "buffer_size: 1e5"))


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError, match=r"nope\.yml"):
        load_hyperparams("CartPole-v1", missing)


def test_invalid_yaml(tmp_path):
    conf = write_conf(tmp_path, "default:\n  batch_size: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_hyperparams("CartPole-v1", conf)
    assert str(conf) in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "default: 3\n"])
def test_wrong_yaml_structure(tmp_path, text):
    with pytest.raises(ConfigError):
        load_hyperparams("CartPole-v1", write_conf(tmp_path, text))


def test_config_error_is_value_error_and_picklable():
    err = ConfigError("bad", file="f.yml", entry="E", key="k")
    assert isinstance(err, ValueError)
    assert str(err) == "file f.yml, entry 'E', key 'k': bad"
    restored = pickle.loads(pickle.dumps(err))
    assert str(restored) == str(err) and restored.key == "k"


# --- overrides ---------------------------------------------------------------------------------------------------


def test_overrides_applied_and_converted(tmp_path):
    overrides = {"batch_size": 256, "learning_rate": "lin_1e-3", "train_freq": [1, "episode"], "gamma": 0.9}
    params, section = load_hyperparams("CartPole-v1", write_conf(tmp_path, SMALL_CONF), overrides)
    assert section == "CartPole-v1"
    assert params["batch_size"] == 256
    assert params["learning_rate"](0.5) == pytest.approx(5e-4)
    assert params["train_freq"] == (1, "episode")
    assert params["gamma"] == 0.9
    assert params["n_timesteps"] == 50_000  # untouched keys keep the file's value


def test_overrides_are_validated(tmp_path):
    conf = write_conf(tmp_path, SMALL_CONF)
    with pytest.raises(ConfigError, match="'gamma'"):
        load_hyperparams("CartPole-v1", conf, {"gamma": 2.0})
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        load_hyperparams("CartPole-v1", conf, {"batchsize": 32})
    with pytest.raises(ConfigError, match="'policy_kwargs'"):
        load_hyperparams("CartPole-v1", conf, {"policy_kwargs": "open('x')"})


def test_overrides_from_cli_end_to_end(tmp_path):
    items = ["policy_kwargs:dict(net_arch=[64, 64])", "buffer_size:1e4", "learning_rate:lin_1e-3"]
    overrides = dict(parse_override(item) for item in items)
    params, _ = load_hyperparams("CartPole-v1", write_conf(tmp_path, SMALL_CONF), overrides)
    assert params["policy_kwargs"] == {"net_arch": [64, 64]}
    assert params["buffer_size"] == 10_000 and isinstance(params["buffer_size"], int)
    assert params["learning_rate"](1.0) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("learning_rate:lin_1e-3", ("learning_rate", "lin_1e-3")),
        ("batch_size:128", ("batch_size", 128)),
        ("buffer_size:1e5", ("buffer_size", 1e5)),
        ("gamma: 0.98", ("gamma", 0.98)),
        ("train_freq:[4, 'step']", ("train_freq", [4, "step"])),
        ("policy_kwargs:dict(net_arch=[64, 64], activation_fn=nn.Tanh)",
         ("policy_kwargs", {"net_arch": [64, 64], "activation_fn": th.nn.Tanh})),
        ("optimize_memory_usage:True", ("optimize_memory_usage", True)),
        ("env_kwargs:None", ("env_kwargs", None)),
        ("policy:MlpPolicy", ("policy", "MlpPolicy")),
        ("policy:'CnnPolicy'", ("policy", "CnnPolicy")),
        ("vec_env:subproc", ("vec_env", "subproc")),
        ("env_wrapper:stable_baselines3.common.atari_wrappers.AtariWrapper",
         ("env_wrapper", "stable_baselines3.common.atari_wrappers.AtariWrapper")),
        ("callback:pkg.mod:Callback", ("callback", "pkg.mod:Callback")),
        ("exploration_final_eps:-0.0", ("exploration_final_eps", 0.0)),
    ],
)  # fmt: skip
def test_parse_override(item, expected):
    assert parse_override(item) == expected


@pytest.mark.parametrize("item", ["batch_size", ":3", "x:1+1", "x:dict(**{})", "x:open('f')", "x:[1, 2", "x:"])
def test_parse_override_rejects(item):
    with pytest.raises(ConfigError):
        parse_override(item)


# --- the repository's config -------------------------------------------------------------------------------------


def test_default_conf_file_is_repo_config():
    # the repository's zoo_configs/dqn.yml links to the copy shipped in the package
    assert DEFAULT_CONF_FILE == REPO_CONF.resolve()
    assert REPO_CONF.is_file() and DEFAULT_CONF_FILE.parent.parent.parent.name == "sb3_parallel_dqn"


@pytest.mark.parametrize(
    ("env_id", "section"),
    [
        ("CartPole-v1", "CartPole-v1"),
        ("Acrobot-v1", "Acrobot-v1"),
        ("MountainCar-v0", "MountainCar-v0"),
        ("LunarLander-v3", "LunarLander-v3"),
        ("Pendulum-v1", "default"),
        ("atari", "atari"),  # loads the `atari` entry itself, whether or not ale_py is installed
    ],
)
def test_repo_config_entries_load(env_id, section):
    params, used = load_hyperparams(env_id)
    assert used == section
    assert params["n_envs"] == 1
    assert isinstance(params["n_timesteps"], int) and params["n_timesteps"] > 0
    assert params["policy"] in ("MlpPolicy", "CnnPolicy")
    assert isinstance(params["buffer_size"], int) and isinstance(params["batch_size"], int)


def test_repo_config_cartpole_values():
    params, _ = load_hyperparams("CartPole-v1", REPO_CONF)
    assert params["policy_kwargs"] == {"net_arch": [64, 64]}
    assert params["policy"] == "MlpPolicy"
    assert params["n_steps"] == 5 and params["train_freq"] == 128 and params["gradient_steps"] == 64
    assert isinstance(params["learning_rate"], float)


def test_repo_config_atari_entry_for_atari_ids(fake_atari_id):
    params, section = load_hyperparams(fake_atari_id)
    assert section == "atari"
    assert params["policy"] == "CnnPolicy"
    assert params["frame_stack"] == 4
