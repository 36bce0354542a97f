"""Save/load round trips, including loading our zips with stock SB3 (mirrors SB3's test_save_load.py)."""

import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN

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
    assert not {"_world_size", "_rank", "_grad_averager", "_global_episode_means"} & data.keys()


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
