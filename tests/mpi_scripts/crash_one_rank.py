"""An exception on rank 1 while rank 0 waits in a collective must end the whole job, not hang it."""

from stable_baselines3.common.callbacks import BaseCallback

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm


class CrashOnRankOne(BaseCallback):
    def _on_step(self) -> bool:
        if comm.rank() == 1 and self.n_calls == 300:
            raise RuntimeError("injected failure on rank 1")
        return True


if __name__ == "__main__":
    model = ParallelDQN("MlpPolicy", "CartPole-v1", learning_starts=100, train_freq=4, policy_kwargs={"net_arch": [16]})
    model.learn(100_000, callback=CrashOnRankOne())
