"""
Files saved by release 0.1.0a0 (``tests/data/saved_0.1.0a0/``, written by its ``make_files.py`` before the folder
reorganisation) still load: their pickles name classes by that release's module paths, which stay importable.
"""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import DQN
from stable_baselines3.common.save_util import load_from_pkl

from sb3_parallel_dqn import ParallelDQN, PrioritizedReplayBuffer
from sb3_parallel_dqn.io.checkpoints import pickled_class

SAVED = Path(__file__).parent / "data" / "saved_0.1.0a0"


def test_the_files_name_the_classes_by_the_old_paths():
    """What this test guards: the pickles hold the module paths of 0.1.0a0, not today's."""
    assert pickled_class(SAVED / "prioritized_replay.pkl") == (
        "sb3_parallel_dqn.prioritized_replay",
        "PrioritizedReplayBuffer",
    )
    assert pickled_class(SAVED / "frame_replay.pkl") == ("sb3_parallel_dqn.frame_replay", "FrameReplayBuffer")


@pytest.mark.parametrize("algo", [ParallelDQN, DQN])
def test_a_model_zip_of_0_1_0a0_loads(algo):
    model = algo.load(SAVED / "dqn_prioritized_dueling.zip")
    assert model.num_timesteps == 120 and model.n_steps == 3
    assert type(model.q_net).__name__ == "DuelingQNetwork"
    assert model.replay_buffer_class is PrioritizedReplayBuffer
    observation = np.zeros((1, 4), dtype=np.float32)
    assert model.predict(observation, deterministic=True)[0].shape == (1,)


def test_a_replay_buffer_of_0_1_0a0_loads_into_a_model():
    model = ParallelDQN.load(SAVED / "dqn_prioritized_dueling.zip", gym.make("CartPole-v1"))
    model.load_replay_buffer(SAVED / "prioritized_replay.pkl")
    buffer = model.replay_buffer
    assert isinstance(buffer, PrioritizedReplayBuffer) and buffer.size() == 120 and buffer.n_steps == 3
    batch, weights, _ = buffer.sample_prioritized(8)
    assert batch.observations.shape == (8, 4) and np.all(weights > 0)


@pytest.mark.parametrize("name", ["frame_replay.pkl", "prioritized_frame_replay.pkl"])
def test_a_frame_replay_buffer_of_0_1_0a0_loads(name):
    buffer = load_from_pkl(SAVED / name)
    assert buffer.size() == 25
    # Transition t was stacked from frames t..t+3 and t+1..t+4 (make_files.py): the stacks rebuild from the frames.
    batch = buffer._get_samples(np.arange(25))  # its own sampling, without random draws
    observations, next_observations = batch.observations.numpy(), batch.next_observations.numpy()
    np.testing.assert_array_equal(observations[1:, :3], observations[:-1, 1:])
    np.testing.assert_array_equal(next_observations[:, :3], observations[:, 1:])
    np.testing.assert_array_equal(batch.rewards.numpy().ravel(), np.arange(25, dtype=np.float32))


def test_a_shard_of_0_1_0a0_is_its_class_when_resuming():
    """train -i checks the saved shard's class by name before loading: the old module path is the same class."""
    from sb3_parallel_dqn.buffers.prioritized import check_class_convertible

    check_class_convertible(pickled_class(SAVED / "prioritized_replay.pkl"), PrioritizedReplayBuffer, "a 0.1.0a0 shard")
