"""
Issue 23, item 3: a resumed model trains with the settings it reports. ``load(path, **kwargs)`` rebuilds what depends
on a changed setting (the replay buffer's class, n_steps, gamma) and ``load_replay_buffer`` converts the saved
transitions to the model's buffer or refuses, naming the setting; ``load`` leaves the process' torch threads alone.
"""

import warnings

import numpy as np
import pytest
import torch as th
from conftest import run_main
from gymnasium import spaces
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.save_util import load_from_pkl, save_to_pkl

from sb3_parallel_dqn import FrameReplayBuffer, ParallelDQN, PrioritizedReplayBuffer
from sb3_parallel_dqn.buffers.prioritized import check_class_convertible, fit_loaded_buffer
from sb3_parallel_dqn.io.checkpoints import pickled_class
from sb3_parallel_dqn.train import main as train_main
from sb3_parallel_dqn.validation import ConfigError

TINY = dict(learning_starts=50, buffer_size=400, batch_size=16, train_freq=8, gradient_steps=2,
            policy_kwargs={"net_arch": [8]}, seed=0)  # fmt: skip


def _saved(tmp_path, **kwargs):
    """A model trained a little on CartPole, saved with its replay buffer; the model, the zip and the buffer file."""
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **{**TINY, **kwargs})
    model.learn(200)
    model.save(tmp_path / "model")
    model.save_replay_buffer(tmp_path / "buffer")
    return model, tmp_path / "model.zip", tmp_path / "buffer.pkl"


def _n_step_settings(buffer):
    return type(buffer), getattr(buffer, "n_steps", None), getattr(buffer, "gamma", None)


def test_item3_load_rebuilds_the_replay_buffer_with_new_n_steps_and_gamma(tmp_path):
    """Item 3: load(ckpt, n_steps=1, gamma=0.9) of an n_steps=5 model reported 1 and 0.9 but kept NStep(5, 0.99)."""
    model, path, _ = _saved(tmp_path, n_steps=5)
    assert _n_step_settings(model.replay_buffer) == (NStepReplayBuffer, 5, 0.99)
    env = model.get_env()
    one_step = ParallelDQN.load(path, env=env, n_steps=1, gamma=0.9)
    assert (one_step.n_steps, one_step.gamma) == (1, 0.9)
    assert _n_step_settings(one_step.replay_buffer) == (ReplayBuffer, None, None)  # SB3's pick for n_steps=1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no "n_steps is ignored" warning
        three = ParallelDQN.load(path, env=env, n_steps=3, gamma=0.9)
    assert _n_step_settings(three.replay_buffer) == (NStepReplayBuffer, 3, 0.9)
    assert _n_step_settings(ParallelDQN.load(path, env=env).replay_buffer) == (NStepReplayBuffer, 5, 0.99)
    # saved again and loaded without arguments: the settings it was last set up with
    three.save(tmp_path / "three")
    assert _n_step_settings(ParallelDQN.load(tmp_path / "three", env=env).replay_buffer) == (NStepReplayBuffer, 3, 0.9)
    # a prioritized model: its buffer takes the model's n_steps and gamma, as on construction
    _, per_path, _ = _saved(tmp_path / "per", n_steps=3, replay_buffer_class=PrioritizedReplayBuffer)
    per = ParallelDQN.load(per_path, env=env, n_steps=2, gamma=0.8)
    assert _n_step_settings(per.replay_buffer) == (PrioritizedReplayBuffer, 2, 0.8)


def test_item3_load_keeps_n_step_settings_the_user_gave_the_buffer(tmp_path):
    """Explicit replay_buffer_kwargs n_steps stay the user's (SB3's rule on construction), through save and load."""
    model = ParallelDQN("MlpPolicy", "CartPole-v1", replay_buffer_class=NStepReplayBuffer,
                        replay_buffer_kwargs={"n_steps": 4, "gamma": 0.5}, **TINY)  # fmt: skip
    model.save(tmp_path / "model")
    loaded = ParallelDQN.load(tmp_path / "model", gamma=0.9)
    assert _n_step_settings(loaded.replay_buffer) == (NStepReplayBuffer, 4, 0.5)


def test_item3_load_replay_buffer_converts_n_step_settings(tmp_path):
    """Item 3: load_replay_buffer put back the saved NStep(5, 0.99) buffer under a model with n_steps=1, gamma=0.9."""
    model, path, buffer_file = _saved(tmp_path, n_steps=5)
    saved = model.replay_buffer
    for n_steps, expected in ((1, (ReplayBuffer, None, None)), (3, (NStepReplayBuffer, 3, 0.9))):
        resumed = ParallelDQN.load(path, env=model.get_env(), n_steps=n_steps, gamma=0.9)
        resumed.load_replay_buffer(buffer_file)
        buffer = resumed.replay_buffer
        assert _n_step_settings(buffer) == expected
        assert buffer.pos == saved.pos and buffer.full == saved.full  # the saved transitions, all of them
        np.testing.assert_array_equal(buffer.observations, saved.observations)
        np.testing.assert_array_equal(buffer.rewards, saved.rewards)
        resumed.learn(64, reset_num_timesteps=False)  # trains on them
        assert resumed.replay_buffer is buffer and buffer.pos == (saved.pos + 64) % buffer.buffer_size


def test_item3_load_replay_buffer_switches_prioritized_replay_on_and_off(tmp_path):
    """Item 3: replay_buffer_class PrioritizedReplayBuffer on resume loaded a plain buffer: sampling stayed uniform."""
    model, path, buffer_file = _saved(tmp_path)
    env = model.get_env()
    per = ParallelDQN.load(path, env=env, replay_buffer_class=PrioritizedReplayBuffer,
                           replay_buffer_kwargs={"alpha": 0.7})  # fmt: skip
    per.load_replay_buffer(buffer_file)
    buffer = per.replay_buffer
    assert isinstance(buffer, PrioritizedReplayBuffer) and (buffer.alpha, buffer.n_steps) == (0.7, 1)
    stored = buffer.size()
    np.testing.assert_array_equal(buffer.tree.priorities[:stored], 1.0)  # a new transition's priority
    np.testing.assert_array_equal(buffer.tree.priorities[stored:], 0.0)  # nothing stored there
    per.learn(64, reset_num_timesteps=False)
    assert len(np.unique(buffer.tree.priorities[:stored])) > 1  # priorities updated: sampling is not uniform
    # and back: a prioritized buffer into a plain model drops its priorities
    per.save(tmp_path / "per")
    per.save_replay_buffer(tmp_path / "per_buffer")
    plain = ParallelDQN.load(tmp_path / "per", env=env, replay_buffer_class=ReplayBuffer, replay_buffer_kwargs={})
    plain.load_replay_buffer(tmp_path / "per_buffer")
    assert type(plain.replay_buffer) is ReplayBuffer and not hasattr(plain.replay_buffer, "tree")
    plain.learn(64, reset_num_timesteps=False)


def test_item3_load_replay_buffer_applies_prioritized_settings(tmp_path):
    """Item 3: a new alpha re-weighs the saved priorities (priority ** alpha), new betas and epsilon apply."""
    model, path, buffer_file = _saved(tmp_path, replay_buffer_class=PrioritizedReplayBuffer)
    saved = model.replay_buffer
    kwargs = {"alpha": 0.3, "beta": 0.2, "final_beta": 0.9, "epsilon": 1e-3}
    resumed = ParallelDQN.load(path, env=model.get_env(), replay_buffer_kwargs=kwargs)
    resumed.load_replay_buffer(buffer_file)
    buffer = resumed.replay_buffer
    assert (buffer.alpha, buffer.initial_beta, buffer.final_beta, buffer.epsilon) == (0.3, 0.2, 0.9, 1e-3)
    np.testing.assert_allclose(buffer.tree.priorities, saved.tree.priorities ** (0.3 / saved.alpha))
    assert buffer.max_priority == saved.max_priority


def test_item3_unconvertible_buffers_are_refused_naming_the_setting(tmp_path):
    """Item 3: what the saved transitions cannot become is refused with a ConfigError naming the key, not loaded."""
    image = spaces.Box(0, 255, (4, 8, 8), np.uint8)
    frames = FrameReplayBuffer(64, image, spaces.Discrete(2), device="cpu")
    with pytest.raises(ConfigError, match=r"key 'replay_buffer_class'.*FrameReplayBuffer"):
        fit_loaded_buffer(frames, ReplayBuffer(64, image, spaces.Discrete(2), device="cpu"), "buffer.pkl")
    box = spaces.Box(-1, 1, (3,))
    compact = ReplayBuffer(64, box, spaces.Discrete(2), device="cpu", optimize_memory_usage=True,
                           handle_timeout_termination=False)  # fmt: skip
    with pytest.raises(ConfigError, match="key 'optimize_memory_usage'"):
        fit_loaded_buffer(compact, ReplayBuffer(64, box, spaces.Discrete(2), device="cpu"), "buffer.pkl")
    # through the model: the error names the key, and the model keeps the buffer it had
    model, path, buffer_file = _saved(tmp_path)
    resumed = ParallelDQN.load(path, env=model.get_env(), optimize_memory_usage=True,
                               replay_buffer_kwargs={"handle_timeout_termination": False})  # fmt: skip
    before = resumed.replay_buffer
    with pytest.raises(ConfigError, match="optimize_memory_usage"):
        resumed.load_replay_buffer(buffer_file)
    assert resumed.replay_buffer is before


def test_item3_same_settings_load_the_saved_buffer_as_it_is(tmp_path):
    model, path, buffer_file = _saved(tmp_path, n_steps=3, replay_buffer_class=PrioritizedReplayBuffer)
    resumed = ParallelDQN.load(path, env=model.get_env())
    resumed.load_replay_buffer(buffer_file)
    assert _n_step_settings(resumed.replay_buffer) == (PrioritizedReplayBuffer, 3, 0.99)
    np.testing.assert_array_equal(resumed.replay_buffer.tree.priorities, model.replay_buffer.tree.priorities)


def test_item3_train_resume_applies_changed_n_steps(tmp_path):
    """Item 3 through the CLI: train -i CKPT -params n_steps:1 gamma:0.9 trains on a one-step buffer, as it reports."""
    common = ["--env", "CartPole-v1", "-f", tmp_path, "--final-eval-episodes", "0", "--eval-freq", "0",
              "--verbose", "0", "--save-replay-buffer"]  # fmt: skip
    first = run_main(train_main, [*common, "-n", "200", "-params", "learning_starts:50", "n_steps:5",
                                  "policy_kwargs:dict(net_arch=[8])"])  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = tmp_path / "parallel_dqn" / "CartPole-v1_1"
    assert _n_step_settings(load_from_pkl(run_dir / "replay_buffer.pkl")) == (NStepReplayBuffer, 5, 0.99)
    resumed = run_main(train_main, [*common, "-n", "64", "-i", run_dir / "CartPole-v1.zip",
                                    "-params", "n_steps:1", "gamma:0.9"])  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    second = tmp_path / "parallel_dqn" / "CartPole-v1_2"
    assert _n_step_settings(load_from_pkl(second / "replay_buffer.pkl")) == (ReplayBuffer, None, None)
    model = ParallelDQN.load(second / "CartPole-v1.zip")
    assert (model.n_steps, model.gamma) == (1, 0.9)
    # a setting the saved transitions cannot follow: exit 2, one line naming the key, before any training
    compact = ["optimize_memory_usage:True", "replay_buffer_kwargs:dict(handle_timeout_termination=False)"]
    refused = run_main(train_main, [*common, "-n", "64", "-i", second / "CartPole-v1.zip", "-params", *compact])
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "optimize_memory_usage" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_item3_load_leaves_the_process_torch_threads_alone(tmp_path):
    """Item 3: ParallelDQN.load(zip) after th.set_num_threads(2) left the process at 1 torch thread."""
    previous = th.get_num_threads()
    try:
        ParallelDQN("MlpPolicy", "CartPole-v1", **TINY).save(tmp_path / "default")
        assert th.get_num_threads() == 1  # the constructor's default stays
        th.set_num_threads(2)
        ParallelDQN.load(tmp_path / "default")
        assert th.get_num_threads() == 2
        ParallelDQN("MlpPolicy", "CartPole-v1", torch_num_threads=3, **TINY).save(tmp_path / "three")
        th.set_num_threads(2)
        ParallelDQN.load(tmp_path / "three")  # the saved model asks for 3 itself
        assert th.get_num_threads() == 3
    finally:
        th.set_num_threads(previous)


def test_item3_train_refuses_an_unconvertible_saved_buffer_before_the_run_folder(tmp_path):
    """Item 3: a saved buffer of another storage than -params replay_buffer_class asks for: exit 2, no new folder."""
    common = ["--env", "CartPole-v1", "-f", tmp_path, "--final-eval-episodes", "0", "--eval-freq", "0", "--verbose", "0"]
    first = run_main(train_main, [*common, "-n", "100", "--save-replay-buffer", "-params", "learning_starts:50",
                                  "policy_kwargs:dict(net_arch=[8])"])  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    run_dir = tmp_path / "parallel_dqn" / "CartPole-v1_1"
    image = spaces.Box(0, 255, (4, 8, 8), np.uint8)
    save_to_pkl(run_dir / "replay_buffer.pkl", FrameReplayBuffer(64, image, spaces.Discrete(2), device="cpu"))
    assert pickled_class(run_dir / "replay_buffer.pkl") == ("sb3_parallel_dqn.buffers.frame", "FrameReplayBuffer")
    refused = run_main(train_main, [*common, "-n", "64", "-i", run_dir / "CartPole-v1.zip",
                                    "-params", "replay_buffer_class:PrioritizedReplayBuffer"])  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "key 'replay_buffer_class'" in refused.stderr and "FrameReplayBuffer" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert [p.name for p in (tmp_path / "parallel_dqn").iterdir()] == ["CartPole-v1_1"]  # nothing created


def test_item3_pickled_class_reads_only_the_header(tmp_path):
    path = tmp_path / "buffer.pkl"
    save_to_pkl(path, ReplayBuffer(16, spaces.Box(-1, 1, (3,)), spaces.Discrete(2), device="cpu"))
    assert pickled_class(path) == ("stable_baselines3.common.buffers", "ReplayBuffer")
    path.write_bytes(path.read_bytes()[:100])  # truncated after the header: still known
    assert pickled_class(path) == ("stable_baselines3.common.buffers", "ReplayBuffer")
    path.write_bytes(b"not a pickle")
    assert pickled_class(path) is None
    check_class_convertible(None, ReplayBuffer, "x")  # unknown: left to the load
    check_class_convertible(("stable_baselines3.common.buffers", "NStepReplayBuffer"), PrioritizedReplayBuffer, "x")
    with pytest.raises(ConfigError, match="key 'replay_buffer_class'"):
        check_class_convertible(("somewhere", "MyBuffer"), None, "x")
