"""Tests for sb3_parallel_dqn.zoo.envs and env_util: rl-baselines3-zoo's dqn.yml read unchanged, its class keys
(env_wrapper, vec_env_wrapper, callback) resolved without eval, normalize, the zoo's wrapper order, and each rank's
envs (seeds as SB3's make_vec_env, monitor files per rank and env)."""

import argparse
import hashlib
import importlib.metadata
import importlib.util
import os
import pickle
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
import yaml
from gymnasium.wrappers import ClipReward, OrderEnforcing, TimeLimit
from stable_baselines3 import DQN
from stable_baselines3.common.atari_wrappers import AtariWrapper
from stable_baselines3.common.callbacks import CheckpointCallback, ProgressBarCallback, StopTrainingOnMaxEpisodes
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecCheckNan,
    VecEnvWrapper,
    VecFrameStack,
    VecNormalize,
    VecTransposeImage,
    unwrap_vec_normalize,
)

from sb3_parallel_dqn import ParallelDQN, make_parallel_vec_env
from sb3_parallel_dqn.io.checkpoints import save_vecnormalize
from sb3_parallel_dqn.zoo.envs import (
    EnvWrappers,
    make_callbacks,
    make_eval_env,
    make_train_env,
    register_optional_envs,
    split_hyperparams,
)
from sb3_parallel_dqn.zoo.hyperparams import ConfigError, is_atari, load_hyperparams, parse_override

ZOO_FILE = Path(__file__).resolve().parent / "data" / "zoo_dqn.yml"
# rl_zoo3 2.9.2's hyperparams/dqn.yml; see tests/data/README.md before changing either.
ZOO_VERSION = "2.9.2"
ZOO_SHA256 = "c39d6e4dde50299f32147db9ef3b327440de3c0b59090f64ef32cd7488b0b764"

PONG = "PongNoFrameskip-v4"
# Small enough to run every entry in seconds: a small buffer, and training starts almost at once.
QUICK = {"buffer_size": 1_000, "learning_starts": 50, "n_envs": 1, "vec_env": "dummy"}

register_optional_envs()


def settings_for(tmp_path: Path, body: str, env_id: str = "CartPole-v1", overrides: dict | None = None):
    """Load a one-entry (``default``) config whose keys are ``body``, then split it."""
    conf = tmp_path / f"conf-{uuid.uuid4().hex[:6]}.yml"
    conf.write_text("default:\n" + textwrap.indent(textwrap.dedent(body).strip(), "  ") + "\n")
    hyperparams, _ = load_hyperparams(env_id, conf, overrides)
    return split_hyperparams(hyperparams)


def vec_chain(env) -> list[type]:
    """The VecEnv wrappers of ``env``, outermost first, down to the VecEnv itself."""
    chain = [type(env)]
    while isinstance(env, VecEnvWrapper):
        env = env.venv
        chain.append(type(env))
    return chain


def env_chain(env: gym.Env) -> list[type]:
    """The gym wrappers of ``env``, outermost first, down to the unwrapped env."""
    chain = [type(env)]
    while isinstance(env, gym.Wrapper):
        env = env.env
        chain.append(type(env))
    return chain


@pytest.fixture(scope="module")
def zoo_manager_cls():
    """
    rl_zoo3's ExperimentManager, to compare against the zoo itself.

    Importing rl_zoo3 replaces ``gymnasium.wrappers.TimeLimit`` by a subclass, process-wide (rl_zoo3/gym_patches.py),
    which is why the tests below check TimeLimit wrappers with ``issubclass``/``isinstance`` rather than ``is``.
    """
    from rl_zoo3.exp_manager import ExperimentManager

    return ExperimentManager


def zoo_manager(zoo_manager_cls, env_id: str, tmp_path: Path):
    return zoo_manager_cls(argparse.Namespace(), "dqn", env_id, str(tmp_path / "zoo_logs"), verbose=0, seed=0)


# --- rl_zoo3's own dqn.yml ---------------------------------------------------------------------------------------


def test_zoo_file_is_verbatim():
    data = ZOO_FILE.read_bytes()
    assert hashlib.sha256(data).hexdigest() == ZOO_SHA256, "tests/data/zoo_dqn.yml must stay a verbatim copy"
    spec = importlib.util.find_spec("rl_zoo3")  # finds the package without importing it
    if spec is not None and importlib.metadata.version("rl_zoo3") == ZOO_VERSION:
        assert spec.submodule_search_locations is not None
        installed = Path(next(iter(spec.submodule_search_locations))) / "hyperparams" / "dqn.yml"
        assert installed.read_bytes() == data


# Every entry of the file, with an env id that selects it.
ZOO_ENTRIES = [
    ("CartPole-v0", "default"),
    (PONG, "atari"),
    ("CartPole-v1", "CartPole-v1"),
    ("MountainCar-v0", "MountainCar-v0"),
    ("LunarLander-v3", "LunarLander-v3"),
    ("Acrobot-v1", "Acrobot-v1"),
]


def test_every_zoo_entry_is_covered():
    assert sorted(yaml.safe_load(ZOO_FILE.read_text())) == sorted(entry for _, entry in ZOO_ENTRIES)


@pytest.mark.parametrize(("env_id", "entry"), ZOO_ENTRIES)
def test_zoo_entry_trains(env_id, entry):
    hyperparams, used = load_hyperparams(env_id, ZOO_FILE, QUICK)
    assert used == entry
    model_kwargs, settings = split_hyperparams(hyperparams)
    raw = yaml.safe_load(ZOO_FILE.read_text())[entry]
    assert settings.policy == raw["policy"]
    assert settings.n_timesteps == int(raw["n_timesteps"])

    env = make_train_env(env_id, settings, seed=0)
    model = ParallelDQN(settings.policy, env, seed=0, **model_kwargs)
    # The entry's values reach the model (the overridden ones are QUICK's).
    for key in ("learning_rate", "batch_size", "gamma", "target_update_interval", "gradient_steps", "exploration_fraction"):
        if key in raw:
            assert getattr(model, key) == pytest.approx(float(raw[key])), key
    assert model.buffer_size == QUICK["buffer_size"]
    if "policy_kwargs" in raw:
        assert model.policy.net_arch == [256, 256]

    if entry == "atari":
        # AtariWrapper (84x84 grey) after Monitor, 4 frames stacked, channels first for the CNN.
        assert is_atari(env_id)
        assert vec_chain(env) == [VecTransposeImage, VecFrameStack, DummyVecEnv]
        assert isinstance(env.unwrapped.envs[0], AtariWrapper)
        assert Monitor in env_chain(env.unwrapped.envs[0])
        assert env.observation_space.shape == (4, 84, 84)
        assert isinstance(model.policy.q_net.features_extractor, NatureCNN)
        pytest.importorskip("cv2", reason="AtariWrapper resizes frames with OpenCV (opencv-python)")

    n_steps = 100 if entry == "atari" else 300
    model.learn(n_steps)
    assert n_steps <= model.num_timesteps < n_steps + model.train_freq.frequency  # whole rollouts of train_freq steps
    assert model._n_updates > 0
    env.close()


# --- env_wrapper, vec_env_wrapper, callback: accepted forms ------------------------------------------------------

TIME_LIMIT = "gymnasium.wrappers.TimeLimit"
CLIP_REWARD = "gymnasium.wrappers.ClipReward"
ORDER = "gymnasium.wrappers.OrderEnforcing"
CHECK_NAN = "stable_baselines3.common.vec_env.VecCheckNan"
FRAME_STACK = "stable_baselines3.common.vec_env.VecFrameStack"
PROGRESS = "stable_baselines3.common.callbacks.ProgressBarCallback"
STOP = "stable_baselines3.common.callbacks.StopTrainingOnMaxEpisodes"

FIELDS = {"env_wrapper": "env_wrappers", "vec_env_wrapper": "vec_env_wrappers", "callback": "callbacks"}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("env_wrapper", ORDER, [(OrderEnforcing, {})]),
        ("env_wrapper", f"{{{CLIP_REWARD}: {{min_reward: -1, max_reward: 0.5}}}}",
         [(ClipReward, {"min_reward": -1, "max_reward": 0.5})]),
        ("env_wrapper", f"[{ORDER}, {{{CLIP_REWARD}: {{max_reward: 0.5}}}}]",
         [(OrderEnforcing, {}), (ClipReward, {"max_reward": 0.5})]),
        ("env_wrapper", f"\n  - {{{CLIP_REWARD}: {{max_reward: 0.5}}}}\n  - {ORDER}",  # the zoo's block style
         [(ClipReward, {"max_reward": 0.5}), (OrderEnforcing, {})]),
        ("env_wrapper", "null", []),
        ("env_wrapper", "[]", []),
        ("vec_env_wrapper", CHECK_NAN, [(VecCheckNan, {})]),
        ("vec_env_wrapper", f"{{{FRAME_STACK}: {{n_stack: 2}}}}", [(VecFrameStack, {"n_stack": 2})]),
        ("vec_env_wrapper", f"[{{{CHECK_NAN}: {{raise_exception: true}}}}, {{{FRAME_STACK}: {{n_stack: 2}}}}]",
         [(VecCheckNan, {"raise_exception": True}), (VecFrameStack, {"n_stack": 2})]),
        ("callback", PROGRESS, [(ProgressBarCallback, {})]),
        ("callback", f"{{{STOP}: {{max_episodes: 3, verbose: 0}}}}",
         [(StopTrainingOnMaxEpisodes, {"max_episodes": 3, "verbose": 0})]),
        ("callback", f"[{PROGRESS}, {{{STOP}: {{max_episodes: 3}}}}]",
         [(ProgressBarCallback, {}), (StopTrainingOnMaxEpisodes, {"max_episodes": 3})]),
        ("callback", "null", []),
    ],
)  # fmt: skip
def test_class_key_forms(tmp_path, key, value, expected):
    model_kwargs, settings = settings_for(tmp_path, f"{key}: {value}")
    assert key not in model_kwargs
    assert [(spec.cls, spec.kwargs) for spec in getattr(settings, FIELDS[key])] == expected


def test_class_keys_from_cli_style_overrides(tmp_path):
    # Values parsed by parse_override (tuples, dicts) are read as YAML ones.
    items = [f"env_wrapper:({{'{TIME_LIMIT}': {{'max_episode_steps': 3}}}},)", f"callback:{STOP}"]
    overrides = dict(parse_override(item) for item in items)
    with pytest.raises(ConfigError, match="missing a required argument: 'max_episodes'"):
        settings_for(tmp_path, "policy: MlpPolicy", overrides=overrides)
    overrides.update([parse_override(f"callback:[{{'{STOP}': dict(max_episodes=1)}}]")])
    _, settings = settings_for(tmp_path, "policy: MlpPolicy", overrides=overrides)
    assert issubclass(settings.env_wrappers[0].cls, TimeLimit)
    assert settings.env_wrappers[0].kwargs == {"max_episode_steps": 3}
    assert [(spec.cls, spec.kwargs) for spec in settings.callbacks] == [(StopTrainingOnMaxEpisodes, {"max_episodes": 1})]


def test_env_wrappers_applied_after_monitor_in_order(tmp_path):
    body = f"""
    env_wrapper:
      - {ORDER}
      - {CLIP_REWARD}: {{max_reward: 0.5}}
      - {TIME_LIMIT}: {{max_episode_steps: 5}}
    """
    _, settings = settings_for(tmp_path, body)
    env = make_train_env("CartPole-v1", settings, seed=0)
    chain = env_chain(env.envs[0])
    assert issubclass(chain[0], TimeLimit) and chain[1:4] == [ClipReward, OrderEnforcing, Monitor]
    env.reset()
    for step in range(1, 6):
        # Alternate actions: CartPole does not fall within 5 steps, so only the TimeLimit(5) ends the episode.
        _, rewards, dones, infos = env.step(np.array([step % 2]))
        assert rewards[0] == 0.5  # CartPole's reward of 1, clipped
        assert dones[0] == (step == 5)
    assert infos[0]["TimeLimit.truncated"]


def test_vec_env_wrappers_applied_in_order(tmp_path):
    body = f"""
    vec_env_wrapper:
      - {CHECK_NAN}: {{raise_exception: true}}
      - {FRAME_STACK}: {{n_stack: 2}}
    """
    _, settings = settings_for(tmp_path, body)
    env = make_train_env("CartPole-v1", settings, seed=0)
    assert vec_chain(env) == [VecFrameStack, VecCheckNan, DummyVecEnv]
    assert env.venv.raise_exception
    assert env.reset().shape == (1, 8)


def test_callbacks_are_made_and_run(tmp_path):
    body = f"""
    callback:
      - {{{STOP}: {{max_episodes: 2}}}}
      - stable_baselines3.common.callbacks.CheckpointCallback:
          save_freq: 10
          save_path: {tmp_path / "checkpoints"}
    """
    _, settings = settings_for(tmp_path, body)
    callbacks = make_callbacks(settings)
    assert [type(c) for c in callbacks] == [StopTrainingOnMaxEpisodes, CheckpointCallback]
    assert callbacks[0].max_episodes == 2 and callbacks[1].save_freq == 10
    # Fresh instances each time: a callback holds the state of one learn() call.
    assert all(a is not b for a, b in zip(callbacks, make_callbacks(settings), strict=True))

    model = ParallelDQN("MlpPolicy", make_train_env("CartPole-v1", settings, seed=0), seed=0, learning_starts=10_000)
    model.learn(5_000, callback=callbacks)
    assert 0 < model.num_timesteps < 1_000  # stopped after 2 random-policy episodes
    assert len(list((tmp_path / "checkpoints").glob("rl_model_*_steps.zip"))) == model.num_timesteps // 10


def test_env_wrappers_callable_pickles():
    wrappers = split_hyperparams({"env_wrapper": [{TIME_LIMIT: {"max_episode_steps": 4}}]})[1].env_wrappers
    restored = pickle.loads(pickle.dumps(EnvWrappers(wrappers)))
    env = restored(gym.make("CartPole-v1"))
    assert isinstance(env, TimeLimit) and env._max_episode_steps == 4


def test_env_wrapper_reaches_spawned_workers(tmp_path):
    body = f"""
    n_envs: 2
    vec_env: subproc
    env_wrapper: {{{TIME_LIMIT}: {{max_episode_steps: 7}}}}
    """
    _, settings = settings_for(tmp_path, body)
    env = make_train_env("MountainCar-v0", settings, seed=0, vec_env_kwargs={"start_method": "spawn"})
    try:
        assert isinstance(env, SubprocVecEnv)
        env.reset()
        for step in range(1, 8):
            _, _, dones, infos = env.step(np.array([0, 2]))  # MountainCar only ends at its goal or after 200 steps
            assert list(dones) == [step == 7] * 2
        assert all(info["TimeLimit.truncated"] for info in infos)
    finally:
        env.close()


# --- wrapper order: the same as rl_zoo3's ExperimentManager.create_envs --------------------------------------------


def test_wrapper_order_matches_the_zoo(tmp_path, zoo_manager_cls):
    entry = yaml.safe_load(ZOO_FILE.read_text())["atari"]
    entry["vec_env_wrapper"] = [{CHECK_NAN: {"raise_exception": True}}]
    entry["normalize"] = "dict(norm_obs=False, norm_reward=True)"
    entry["gamma"] = 0.98
    conf = tmp_path / "atari.yml"
    conf.write_text(yaml.safe_dump({"atari": entry}))
    _, settings = split_hyperparams(load_hyperparams(PONG, conf)[0])

    manager = zoo_manager(zoo_manager_cls, PONG, tmp_path)
    _, manager.env_wrapper, _, manager.vec_env_wrapper = manager._preprocess_hyperparams(dict(entry))
    for eval_env in (False, True):
        ours = make_eval_env(PONG, settings, seed=0) if eval_env else make_train_env(PONG, settings, seed=0)
        zoo = manager.create_envs(1, eval_env=eval_env, no_log=True)
        expected = [VecTransposeImage, VecFrameStack, VecNormalize, VecCheckNan, DummyVecEnv]
        assert vec_chain(ours) == vec_chain(zoo) == expected
        assert env_chain(ours.unwrapped.envs[0]) == env_chain(zoo.unwrapped.envs[0])
        ours_norm, zoo_norm = unwrap_vec_normalize(ours), unwrap_vec_normalize(zoo)
        for attribute in ("training", "norm_obs", "norm_reward", "gamma", "clip_obs", "clip_reward"):
            assert getattr(ours_norm, attribute) == getattr(zoo_norm, attribute), (eval_env, attribute)
        assert ours.observation_space == zoo.observation_space
        assert ours.observation_space.shape == (4, 84, 84)
        ours.close()
        zoo.close()


# --- normalize ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("normalize: true", {}),
        ("normalize: {}", {}),
        ("normalize: true\ngamma: 0.95", {"gamma": 0.95}),
        ('normalize: "dict(norm_obs=True, norm_reward=False)"', {"norm_obs": True, "norm_reward": False}),
        ("normalize: {norm_obs: false, clip_reward: 5.0}\ngamma: 0.9", {"norm_obs": False, "clip_reward": 5.0, "gamma": 0.9}),
        ('normalize: "dict(gamma=0.5)"\ngamma: 0.9', {"gamma": 0.9}),  # as the zoo: the model's discount wins
        ('normalize: "dict(gamma=0.5)"', {"gamma": 0.5}),
        ("normalize: false\ngamma: 0.9", None),
        ("gamma: 0.9", None),
    ],
)
def test_normalize_kwargs_as_the_zoo(tmp_path, zoo_manager_cls, body, expected):
    model_kwargs, settings = settings_for(tmp_path, body)
    assert settings.normalize_kwargs == expected
    assert "normalize" not in model_kwargs

    manager = zoo_manager(zoo_manager_cls, "CartPole-v1", tmp_path)
    manager._preprocess_normalization(yaml.safe_load(body))
    assert (manager.normalize_kwargs if manager.normalize else None) == expected


@pytest.mark.parametrize("value", ['"dict(venv=None)"', "{norm_obs: true, normalise_reward: 1}", "3", '"dict(gamma=nn.ReLU)"'])
def test_normalize_rejects(tmp_path, value):
    with pytest.raises(ConfigError, match="'normalize'"):
        settings_for(tmp_path, f"normalize: {value}")


def test_normalized_train_and_eval_envs(tmp_path):
    _, settings = settings_for(tmp_path, "normalize: true\ngamma: 0.9")
    train, evaluation = make_train_env("CartPole-v1", settings, seed=0), make_eval_env("CartPole-v1", settings, seed=1)
    train_norm, eval_norm = unwrap_vec_normalize(train), unwrap_vec_normalize(evaluation)
    assert (train_norm.training, train_norm.norm_obs, train_norm.norm_reward, train_norm.gamma) == (True, True, True, 0.9)
    assert (eval_norm.training, eval_norm.norm_obs, eval_norm.norm_reward) == (False, True, False)
    for env in (train, evaluation):
        env.reset()
        for _ in range(10):
            env.step(np.array([env.action_space.sample()]))
    assert train_norm.obs_rms.count > 10
    assert eval_norm.obs_rms.count == pytest.approx(1e-4)  # RunningMeanStd's initial count: never updated


def test_vecnormalize_save_load_round_trip(tmp_path):
    _, settings = settings_for(tmp_path, 'normalize: "dict(norm_reward=False)"')
    model = ParallelDQN("MlpPolicy", make_train_env("CartPole-v1", settings, seed=0), seed=0, learning_starts=100)
    model.learn(200)
    stats = model.get_vec_normalize_env()
    assert stats is not None and stats.obs_rms.count > 200
    path = tmp_path / "run" / "CartPole-v1" / "vecnormalize.pkl"
    assert save_vecnormalize(model.get_env(), path) == path and path.is_file()

    evaluation = unwrap_vec_normalize(make_eval_env("CartPole-v1", settings, seed=1, vecnormalize_path=path))
    resumed = unwrap_vec_normalize(make_train_env("CartPole-v1", settings, seed=0, vecnormalize_path=path))
    for loaded in (evaluation, resumed):
        np.testing.assert_array_equal(loaded.obs_rms.mean, stats.obs_rms.mean)
        np.testing.assert_array_equal(loaded.obs_rms.var, stats.obs_rms.var)
        assert loaded.obs_rms.count == stats.obs_rms.count
    assert (evaluation.training, evaluation.norm_reward) == (False, False)
    assert (resumed.training, resumed.norm_reward) == (True, False)


def test_vecnormalize_path_missing(tmp_path):
    missing = tmp_path / "nope" / "vecnormalize.pkl"
    _, normalized = settings_for(tmp_path, "normalize: true")
    with pytest.raises(FileNotFoundError, match=r"vecnormalize\.pkl"):
        make_eval_env("CartPole-v1", normalized, seed=0, vecnormalize_path=missing)
    # Without normalize a missing file is no error (as in the zoo, which loads the file only if it exists).
    _, plain = settings_for(tmp_path, "policy: MlpPolicy")
    assert unwrap_vec_normalize(make_train_env("CartPole-v1", plain, seed=0, vecnormalize_path=missing)) is None


def test_save_vecnormalize_without_vecnormalize(tmp_path):
    path = tmp_path / "vecnormalize.pkl"
    assert save_vecnormalize(None, path) is None
    assert save_vecnormalize(make_vec_env("CartPole-v1"), path) is None
    assert not path.exists()


# --- rejected class keys: nothing is called ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("env_wrapper", "no_such_module_4f2a.Wrapper", "cannot import module 'no_such_module_4f2a'"),
        ("env_wrapper", "gymnasium.wrappers.NoSuchWrapper", "no attribute 'NoSuchWrapper'"),
        ("env_wrapper", "gymnasium.wrappers", "not a subclass of gymnasium.core.Wrapper"),  # a module
        ("env_wrapper", "os.system", "not a subclass"),
        ("env_wrapper", "os.path.join", "not a subclass"),
        ("env_wrapper", "builtins.eval", "not a subclass"),
        ("env_wrapper", "builtins.exec", "not a subclass"),
        ("env_wrapper", "subprocess.Popen", "not a subclass"),
        ("env_wrapper", "builtins.object", "not a subclass"),
        ("env_wrapper", FRAME_STACK, "not a subclass of gymnasium.core.Wrapper"),  # a VecEnvWrapper
        ("vec_env_wrapper", TIME_LIMIT, "not a subclass of stable_baselines3.common.vec_env.base_vec_env.VecEnvWrapper"),
        ("vec_env_wrapper", "subprocess.Popen", "not a subclass"),
        ("callback", TIME_LIMIT, "not a subclass of stable_baselines3.common.callbacks.BaseCallback"),
        ("callback", "os.system", "not a subclass"),
        ("callback", "stable_baselines3.common.callbacks.BaseCallback", "abstract"),
        ("env_wrapper", TIME_LIMIT, "missing a required argument: 'max_episode_steps'"),
        ("env_wrapper", {TIME_LIMIT: {"max_episode_steps": 5, "max_steps": 5}}, "unexpected keyword argument 'max_steps'"),
        ("callback", {STOP: {"max_episodes": 1, "n_calls": 2}}, "unexpected keyword argument 'n_calls'"),
    ],
)  # fmt: skip
def test_class_key_rejects_resolution(key, value, match):
    with pytest.raises(ConfigError, match=match) as info:
        split_hyperparams({key: value})
    message = str(info.value)
    assert f"'{key}'" in message and info.value.key == key
    assert repr(value if isinstance(value, str) else next(iter(value))) in message  # the offending text


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({TIME_LIMIT: [5]}, r"must be a mapping, got list \[5\]"),
        ({TIME_LIMIT: "max_episode_steps=5"}, "must be a mapping, got str 'max_episode_steps=5'"),
        ({TIME_LIMIT: None}, "must be a mapping, got NoneType"),
        ({TIME_LIMIT: {"max_episode_steps": object}}, "plain values"),
        ({TIME_LIMIT: {"max_episode_steps": th.nn.ReLU}}, "plain values"),
        ({TIME_LIMIT: {5: 5}}, "keys must be strings"),
        ({TIME_LIMIT: {"max_episode_steps": 5}, ORDER: {}}, "one-item mapping"),
        ("TimeLimit", "dotted class name"),
        (".wrappers.TimeLimit", "dotted class name"),
        ("gymnasium..TimeLimit", "dotted class name"),
        ("gymnasium.wrappers.TimeLimit ", "dotted class name"),
        ("os.system('touch x')", "dotted class name"),
        ("__import__('os').system('touch x')", "dotted class name"),
        (3, "dotted class name"),
        (True, "dotted class name"),
        ([[TIME_LIMIT]], "dotted class name"),
    ],
)  # fmt: skip
def test_class_key_rejects_form(tmp_path, value, match):
    for key in FIELDS:
        # Found by the loader already, with the file and entry in the message.
        with pytest.raises(ConfigError, match=match) as info:
            settings_for(tmp_path, "policy: MlpPolicy", overrides={key: value})
        assert info.value.key == key and info.value.entry == "default"
        # The same check guards split_hyperparams when it is given an entry that did not come from the loader.
        with pytest.raises(ConfigError, match=match):
            split_hyperparams({key: value})


def test_rejected_names_are_never_called(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "system", lambda *args: calls.append(("os.system", args)))

    class SpyPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            calls.append(("Popen", args))

    monkeypatch.setattr(subprocess, "Popen", SpyPopen)
    for name in ("os.system", "subprocess.Popen"):
        for key in FIELDS:
            with pytest.raises(ConfigError, match="not a subclass"):
                split_hyperparams({key: [{name: {"args": "touch x"}}]})
    assert calls == []


def test_config_payload_is_never_executed(tmp_path, monkeypatch):
    # A module with a function and a non-wrapper class, each of which would leave a marker file if called.
    marker = tmp_path / "pwned"
    module = f"payload_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(f"""
        from pathlib import Path

        def touch(*args, **kwargs):
            Path({str(marker)!r}).touch()

        class NotAWrapper:
            def __init__(self, *args, **kwargs):
                touch()

            def __init_subclass__(cls, **kwargs):
                touch()
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = tmp_path / "dqn.yml"
    for value in (f"{module}.touch", f"{module}.NotAWrapper", f"[{{{module}.NotAWrapper: {{x: 1}}}}]",
                  f"\"{module}.touch('x')\"", f"\"__import__('{module}').touch()\""):  # fmt: skip
        for key in FIELDS:
            conf.write_text(f"CartPole-v1:\n  {key}: {value}\n")
            with pytest.raises(ConfigError):
                split_hyperparams(load_hyperparams("CartPole-v1", conf)[0])
            assert not marker.exists(), (key, value)


# --- each rank's envs ----------------------------------------------------------------------------------------------


def test_monitor_files_per_rank_and_env(tmp_path):
    _, settings = settings_for(tmp_path, "n_envs: 2\nvec_env: dummy")
    env = make_train_env("CartPole-v1", settings, seed=0, monitor_dir=str(tmp_path / "run"))
    env.reset()
    for _ in range(100):  # long enough for an episode of each env to end in its monitor file
        env.step(np.array([0, 0]))
    env.close()
    files = sorted((tmp_path / "run").glob("*.monitor.csv"))
    assert [f.name for f in files] == ["0.0.monitor.csv", "0.1.monitor.csv"]
    assert all(len(f.read_text().splitlines()) > 2 for f in files)  # header lines, then episodes


@pytest.mark.parametrize("env_id", ["CartPole-v1", lambda: gym.make("CartPole-v1")])
def test_one_process_envs_are_make_vec_envs(env_id):
    ours = make_parallel_vec_env(env_id, n_envs=2, seed=5, vec_env_cls="dummy")
    sb3 = make_vec_env(env_id, n_envs=2, seed=5)
    assert ours._seeds == sb3._seeds == [5, 6]
    np.testing.assert_array_equal(ours.reset(), sb3.reset())
    for _ in range(50):
        actions = [env.action_space.sample() for env in ours.envs]
        assert actions == [env.action_space.sample() for env in sb3.envs]  # action spaces seeded 5 and 6
        for a, b in zip(ours.step(np.array(actions)), sb3.step(np.array(actions)), strict=True):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b)
    # Unseeded: both draw the VecEnv seeds from numpy's global generator, the same way.
    np.random.seed(0)
    unseeded = make_parallel_vec_env(env_id, n_envs=2, vec_env_cls="dummy")._seeds
    np.random.seed(0)
    assert unseeded == make_vec_env(env_id, n_envs=2)._seeds


def test_one_process_training_is_sb3_dqn():
    kwargs = {"learning_starts": 100, "train_freq": 4, "buffer_size": 1_000, "policy_kwargs": {"net_arch": [16]}, "seed": 1}
    sb3 = DQN("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=1), **kwargs).learn(400)
    ours = ParallelDQN("MlpPolicy", make_parallel_vec_env("CartPole-v1", n_envs=2, seed=1, vec_env_cls="dummy"), **kwargs)
    ours.learn(400)
    assert ours._n_updates == sb3._n_updates > 0
    for name, tensor in sb3.policy.state_dict().items():
        assert th.equal(ours.policy.state_dict()[name], tensor), name


def test_register_optional_envs(monkeypatch):
    register_optional_envs()  # idempotent
    assert gym.spec(PONG).id == PONG and is_atari(PONG)
    # Without ale_py it does nothing, quietly (None in sys.modules makes the import fail).
    monkeypatch.setitem(sys.modules, "ale_py", None)
    assert register_optional_envs() is None
