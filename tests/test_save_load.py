"""Save/load round trips, including loading our zips with stock SB3 (mirrors SB3's test_save_load.py)."""

import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer

from sb3_parallel_dqn import ParallelDQN


@pytest.fixture
def trained(tmp_path):
    model = ParallelDQN(
        "MlpPolicy",
        "CartPole-v1",
        learning_starts=50,
        buffer_size=1_000,
        policy_kwargs={"net_arch": [16]},
        sync_check_interval=123,
        seed=1,
    )
    model.learn(300)
    path = tmp_path / "model.zip"
    model.save(path)
    return model, path


def test_save_load_same_weights_and_settings(trained):
    model, path = trained
    loaded = ParallelDQN.load(path)
    for name, tensor in model.policy.state_dict().items():
        assert th.equal(tensor, loaded.policy.state_dict()[name]), name
    assert loaded.sync_check_interval == 123
    assert loaded.num_timesteps == model.num_timesteps
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_stock_sb3_loads_our_zip(trained):
    model, path = trained
    stock = DQN.load(path)
    obs = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], stock.predict(obs, deterministic=True)[0])


def test_zip_holds_no_process_local_state(trained):
    from stable_baselines3.common.save_util import load_from_zip_file

    _, path = trained
    data, _, _ = load_from_zip_file(path)
    assert not {"_world_size", "_rank", "_collector", "_learner", "_clock", "_mesh"} & data.keys()


def test_continue_training_after_load(trained):
    model, path = trained
    loaded = ParallelDQN.load(path, env=model.get_env())
    loaded.learn(200, reset_num_timesteps=False)
    assert loaded.num_timesteps == model.num_timesteps + 200


def test_replay_buffer_round_trip(tmp_path, trained):
    model, _ = trained
    model.save_replay_buffer(tmp_path / "buffer")
    assert (tmp_path / "buffer.pkl").exists()  # one process: SB3's file name
    fresh = ParallelDQN("MlpPolicy", "CartPole-v1", buffer_size=1_000, policy_kwargs={"net_arch": [16]})
    fresh.load_replay_buffer(tmp_path / "buffer")
    assert fresh.replay_buffer.pos == model.replay_buffer.pos
    np.testing.assert_array_equal(fresh.replay_buffer.observations, model.replay_buffer.observations)


def test_n_step_model_loads_with_its_n_step_buffer_and_no_warning(tmp_path):
    """SB3 warns "n_steps is ignored" when load() sets up an n-step model again; it is not ignored, so we stay quiet."""
    import warnings

    from stable_baselines3.common.buffers import NStepReplayBuffer

    model = ParallelDQN("MlpPolicy", "CartPole-v1", n_steps=3, learning_starts=50, buffer_size=500, seed=0,
                        policy_kwargs={"net_arch": [16]})  # fmt: skip
    model.learn(200)
    model.save(tmp_path / "n_step")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = ParallelDQN.load(tmp_path / "n_step", env=model.get_env())
    assert isinstance(loaded.replay_buffer, NStepReplayBuffer)
    assert loaded.replay_buffer.n_steps == 3 and loaded.n_steps == 3
    with pytest.warns(UserWarning, match="n_steps=3` is ignored"):  # a buffer class of the user's own: SB3's warning stays
        ParallelDQN("MlpPolicy", "CartPole-v1", n_steps=3, replay_buffer_class=_MyBuffer)


class _MyBuffer(ReplayBuffer):
    """A user's replay buffer class."""


def _n_step_sample(buffer, row: int):
    """The n-step sample of one stored row (env 0), as NStepReplayBuffer computes it."""
    return buffer._get_samples(np.array([row]))


@pytest.mark.parametrize("resume", ["load", "reset_num_timesteps"])
def test_restarted_collection_does_not_chain_the_cut_episode(tmp_path, resume):
    """
    Regression (issue 12, item 5): after load + load_replay_buffer + learn(reset_num_timesteps=False), or a second
    learn(reset_num_timesteps=True), the envs are reset; the newest stored row must stay the end of its (cut) episode
    instead of chaining into the new episode's first steps in n-step returns.
    """
    kwargs = {"learning_starts": 50, "buffer_size": 1_000, "policy_kwargs": {"net_arch": [16]}, "n_steps": 3, "seed": 3}
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **kwargs).learn(203)
    buffer = model.replay_buffer
    last = buffer.pos - 1
    assert buffer.dones[last, 0] == 0 and buffer.timeouts[last, 0] == 0, "the run must end mid-episode"
    before = _n_step_sample(buffer, last)  # NStepReplayBuffer cuts at pos - 1 itself while it is the newest row
    assert before.discounts.item() == pytest.approx(model.gamma)  # a 1-step return

    if resume == "load":
        model.save(tmp_path / "model")
        model.save_replay_buffer(tmp_path / "buffer")
        model = ParallelDQN.load(tmp_path / "model", env=model.get_env())
        model.load_replay_buffer(tmp_path / "buffer")
        model.learn(40, reset_num_timesteps=False)
    else:
        model.learn(40, reset_num_timesteps=True)
    after = _n_step_sample(model.replay_buffer, last)
    assert model.replay_buffer.pos == last + 1 + 40  # newer rows exist: nothing cuts at `last` by accident
    for name in ("observations", "actions", "next_observations", "dones", "rewards", "discounts"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name), err_msg=name)
