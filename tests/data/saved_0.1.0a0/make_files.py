"""
Write the files of ``tests/data/saved_0.1.0a0/`` with the package as it was on 2026-12-04 (release 0.1.0a0, before
the folder reorganisation of issue 24): a model zip and replay buffers whose pickles name the classes by the module
paths of that release. ``tests/test_saved_files.py`` loads them, so that a moved class keeps loading. Run it from
the repository root only to make these files again with that release (they are committed; never regenerate them
with a later one, or the test would check nothing)::

    python tests/data/saved_0.1.0a0/make_files.py
"""

from pathlib import Path

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.save_util import save_to_pkl

from sb3_parallel_dqn import ParallelDQN, PrioritizedReplayBuffer
from sb3_parallel_dqn.frame_replay import FrameReplayBuffer, PrioritizedFrameReplayBuffer

HERE = Path(__file__).parent

model = ParallelDQN("MlpPolicy", "CartPole-v1", buffer_size=200, learning_starts=50, batch_size=16, n_steps=3,
                    replay_buffer_class=PrioritizedReplayBuffer, policy_kwargs=dict(net_arch=[8], dueling=True),
                    seed=0)  # fmt: skip
model.learn(120)
model.save(HERE / "dqn_prioritized_dueling.zip")
model.save_replay_buffer(HERE / "prioritized_replay.pkl")

image = spaces.Box(0, 255, (4, 6, 6), np.uint8)
rng = np.random.default_rng(0)
for cls, name in ((FrameReplayBuffer, "frame_replay.pkl"), (PrioritizedFrameReplayBuffer, "prioritized_frame_replay.pkl")):
    buffer = cls(40, image, spaces.Discrete(3), "cpu", n_envs=1)
    frames = rng.integers(0, 256, size=(30, 1, 6, 6), dtype=np.uint8)
    for t in range(25):
        obs = np.concatenate([frames[t + i] for i in range(4)])[None]
        next_obs = np.concatenate([frames[t + 1 + i] for i in range(4)])[None]
        buffer.add(obs, next_obs, np.array([[t % 3]]), np.array([float(t)]), np.array([t % 10 == 9]), [{}])
    save_to_pkl(HERE / name, buffer)
