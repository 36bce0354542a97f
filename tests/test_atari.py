"""Atari end to end under mpirun: AtariWrapper, frame stack 4, channel-first images and CnnPolicy, as in the zoo."""

import re

import pytest
from conftest import REPO_DIR, check_ok, run_mpi, run_python
from stable_baselines3.common.save_util import load_from_pkl

from sb3_parallel_dqn import FrameReplayBuffer, ParallelDQN

# ale-py ships the ROMs; CI installs it with the test extra, so this does not skip there.
pytest.importorskip("ale_py")

ENV = "PongNoFrameskip-v4"


@pytest.mark.slow
def test_pong_smoke_run_under_mpirun(tmp_path):
    # A tiny budget and buffer: the point is the pipeline (wrappers, image transposition, CNN, sync), not learning.
    args = [str(REPO_DIR / "scripts" / "train.py"), "--env", ENV, "-n", "1600", "--seed", "0", "-f", str(tmp_path),
            "--eval-freq", "1200", "--eval-episodes", "1", "--final-eval-episodes", "0", "--save-freq", "800",
            "--save-replay-buffer", "-params", "buffer_size:1000", "learning_starts:800", "train_freq:8"]  # fmt: skip
    result = check_ok(run_mpi(args, timeout=300))
    assert f"config entry '{ENV}'" in result.stdout
    run_dir = tmp_path / "parallel_dqn" / f"{ENV}_1"
    model = ParallelDQN.load(run_dir / f"{ENV}.zip")
    assert type(model.policy).__name__ == "CnnPolicy"
    assert model.observation_space.shape == (4, 84, 84)  # AtariWrapper 84x84 gray, 4 frames, channel first
    assert model.num_timesteps >= 1600 and model._n_updates > 0
    assert (run_dir / "evaluations.npz").exists() and (run_dir / "rl_model_800_steps.zip").exists()
    assert sorted(p.name for p in run_dir.glob("*.monitor.csv")) == ["0.0.monitor.csv", "1.0.monitor.csv"]
    # The entry's FrameReplayBuffer: each rank saved its own with the checkpoint, and a resume reloads and extends it.
    shards = sorted(run_dir.glob("*replay_buffer*800*.pkl"))
    assert len(shards) == 2, sorted(p.name for p in run_dir.iterdir())
    buffer = load_from_pkl(shards[0])
    assert isinstance(buffer, FrameReplayBuffer) and buffer.frames.shape[2:] == (1, 84, 84) and buffer.size() >= 400
    check_ok(run_mpi([*args[:3], "-n", "400", "-i", str(run_dir / "rl_model_800_steps.zip"), "-f", str(tmp_path),
                      "--eval-freq", "1200", "--eval-episodes", "1", "--final-eval-episodes", "0"], timeout=300))  # fmt: skip
    resumed = tmp_path / "parallel_dqn" / f"{ENV}_2"
    model = ParallelDQN.load(resumed / f"{ENV}.zip")
    assert model.num_timesteps == 1200 and model._n_updates > 0  # 400 steps more, on the reloaded frame buffers

    # evaluate.py rebuilds the same wrappers from the run's config.yml
    result = check_ok(
        run_python([str(REPO_DIR / "scripts" / "evaluate.py"), "--env", ENV, "-f", str(tmp_path), "-n", "1", "--seed", "0"])
    )
    assert re.search(rf"{ENV}: mean return -?[\d.]+ \+/- [\d.]+ over 1 episodes", result.stdout), result.stdout
