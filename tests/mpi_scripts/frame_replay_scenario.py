"""
Train on every rank with PrioritizedFrameReplayBuffer (3-step returns, 2 frame-stacked envs per rank), with a shadow
PrioritizedReplayBuffer on each rank fed the same transitions and priorities: every batch the frame buffer samples
must equal the shadow's for the same random state. Then save and load each rank's buffer and train on.

Writes, per rank: the weights and what it saw (batches compared, largest weights, buffer sizes).
"""

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

from sb3_parallel_dqn import ParallelDQN, PrioritizedFrameReplayBuffer, PrioritizedReplayBuffer
from sb3_parallel_dqn.distributed import comm


class FrameEnv(gym.Env):
    """Random 1 x 6 x 6 frames; the reward is 1 when the action matches the parity of the frame's first pixel."""

    observation_space = spaces.Box(0, 255, (1, 6, 6), np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.frame = 0, self.np_random.integers(0, 256, (1, 6, 6), dtype=np.uint8)
        return self.frame, {}

    def step(self, action):
        reward = float(int(action) == int(self.frame[0, 0, 0]) % 2)
        self.t += 1
        self.frame = self.np_random.integers(0, 256, (1, 6, 6), dtype=np.uint8)
        return self.frame, reward, self.t >= 20, False, {}


def run(out_dir: Path) -> None:
    rank = comm.rank()
    env = VecFrameStack(DummyVecEnv([FrameEnv, FrameEnv]), 4)
    model = ParallelDQN("MlpPolicy", env, learning_starts=100, train_freq=4, gradient_steps=2, buffer_size=300,
                        batch_size=16, target_update_interval=100, n_steps=3, double_q=True,
                        replay_buffer_class=PrioritizedFrameReplayBuffer, policy_kwargs={"net_arch": [32]},
                        sync_check_interval=5, seed=5)  # fmt: skip
    buffer = model.replay_buffer
    shadow = PrioritizedReplayBuffer(300, env.observation_space, env.action_space, "cpu", n_envs=2, n_steps=3,
                                     gamma=model.gamma)  # fmt: skip
    seen = {"compared": 0, "local_max": [], "divided_by": []}
    add, sample_prioritized, update_priorities = buffer.add, buffer.sample_prioritized, buffer.update_priorities
    set_progress = buffer.set_progress
    allreduce_max_ = comm.allreduce_max_

    def mirrored_add(*args, **kwargs):
        shadow.add(*args, **kwargs)
        add(*args, **kwargs)

    def compared_sample(batch_size, env=None):
        state = np.random.get_state()
        expected = shadow.sample_prioritized(batch_size, env)
        np.random.set_state(state)
        got = sample_prioritized(batch_size, env)
        for a, b in zip(got[0], expected[0], strict=True):
            assert (a is None and b is None) or th.equal(a, b), "a frame-buffer batch differs from the shadow's"
        assert np.array_equal(got[2], expected[2]), "other leaves"
        assert np.array_equal(got[1], expected[1]), "other importance weights"
        seen["compared"] += 1
        seen["local_max"].append(float(got[1].max()))
        return got

    def mirrored_update(leaves, td_errors):
        shadow.update_priorities(leaves, td_errors)
        update_priorities(leaves, td_errors)

    def mirrored_progress(progress_remaining):  # beta's annealing
        shadow.set_progress(progress_remaining)
        set_progress(progress_remaining)

    def recording_allreduce_max_(array, group=None, what="Allreduce (max)"):
        result = allreduce_max_(array, group, what)
        seen["divided_by"].append(float(result[0]))
        return result

    buffer.add, buffer.sample_prioritized, buffer.update_priorities = mirrored_add, compared_sample, mirrored_update
    buffer.set_progress = mirrored_progress
    comm.allreduce_max_ = recording_allreduce_max_
    try:
        model.learn(1_200)
    finally:
        comm.allreduce_max_ = allreduce_max_
        for name in ("add", "sample_prioritized", "update_priorities", "set_progress"):
            delattr(buffer, name)  # the class' own methods again (and a buffer that pickles)
    size_before = buffer.size()
    model.save_replay_buffer(out_dir / "replay")
    model.load_replay_buffer(out_dir / "replay")
    loaded = model.replay_buffer
    assert isinstance(loaded, PrioritizedFrameReplayBuffer) and loaded is not buffer
    model.learn(400, reset_num_timesteps=False)
    state = {name: tensor.cpu().numpy() for name, tensor in model.policy.state_dict().items()}
    np.savez(out_dir / f"weights_rank{rank}.npz", **state)
    info = seen | {"size_before": size_before, "size_after": loaded.size(), "num_timesteps": model.num_timesteps,
                   "frames_shape": list(loaded.frames.shape)}  # fmt: skip
    (out_dir / f"info_rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    run(Path(sys.argv[1]))
