"""
A callback stops training on rank 1 only, mid-rollout: every rank must leave learn() cleanly at the same rollout, and
agree on what happened (global step count, episode count, checkpoint). Then every rank loads rank 0's model file and
resumes: each rank's episode statistics must hold its own episodes only (the file holds rank 0's).
"""

import hashlib
import sys
from pathlib import Path

from report import report
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import LinearSchedule

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.io.checkpoints import ParallelCheckpointCallback


class StopOnRankOne(BaseCallback):
    def _on_step(self) -> bool:
        return not (comm.rank() == 1 and self.n_calls >= 140)


def digest(tensors) -> str:
    return hashlib.sha256(b"".join(t.detach().cpu().numpy().tobytes() for t in tensors)).hexdigest()


def monitor_episodes(model: ParallelDQN) -> int:
    return len(model.get_env().envs[0].get_episode_rewards())  # type: ignore[attr-defined]


def run(out_dir: Path) -> None:
    # A decaying learning rate, and target updates every 143 steps per rank on 2 ranks (every 71 on 4, 35 on 8): each
    # rank would otherwise keep its own progress and target network after the stop (rank 0's step 143 updates it).
    kwargs = {"learning_starts": 100, "train_freq": 16, "gradient_steps": 4, "policy_kwargs": {"net_arch": [16]},
              "learning_rate": LinearSchedule(1e-3, 1e-4, 1.0), "target_update_interval": 286}  # fmt: skip
    model = ParallelDQN("MlpPolicy", "CartPole-v1", seed=0, **kwargs)
    # Rank 1 stops at its step 140 (global 280 by its count), rank 0 at the end of that rollout (its step 144, global
    # 288 by its count): the checkpoint due at 280 global steps must be written by both ranks or by neither.
    checkpoints = ParallelCheckpointCallback(save_freq=280, save_path=str(out_dir / "ckpt"), save_replay_buffer=True)
    model.learn(50_000, callback=[StopOnRankOne(), checkpoints])
    info = {
        "num_timesteps": model.num_timesteps,
        "n_updates": model._n_updates,
        "episode_num": model._episode_num,
        "monitor_episodes": monitor_episodes(model),
        # what every rank must agree on after the stop, as after any rollout
        "progress": model._current_progress_remaining,
        "exploration_rate": model.exploration_rate,
        "n_calls": model._n_calls,
        "target": digest(model.q_net_target.parameters()),
    }
    model.train(gradient_steps=4, batch_size=32)  # as a profiler or a user might, right after learn()
    info["weights_after_train"] = digest(model.q_net.parameters())
    # The ranks agree on the step count, so training can go on from there.
    model.learn(64, reset_num_timesteps=False)
    info["num_timesteps_after_more"] = model.num_timesteps
    model.save(out_dir / "model")
    comm.comm().Barrier()  # type: ignore[union-attr]

    # Every rank resumes from rank 0's file: rank 1 must not count rank 0's restored episodes as its own.
    resumed = ParallelDQN.load(out_dir / "model", env=model.get_env())
    restored = len(resumed.ep_info_buffer)  # type: ignore[arg-type]
    episodes_before = monitor_episodes(resumed)
    resumed.learn(64, reset_num_timesteps=False)
    info["restored_episodes"] = restored
    info["episodes_after_resume"] = len(resumed.ep_info_buffer)  # type: ignore[arg-type]
    info["new_monitor_episodes"] = monitor_episodes(resumed) - episodes_before
    report(out_dir, "stop", **info)


if __name__ == "__main__":
    run(Path(sys.argv[1]))
