"""Data-parallel behaviour under a real ``mpirun -np 2`` (each test launches real processes, with a timeout)."""

import json

import gymnasium as gym
import numpy as np
import pytest
from conftest import MPI_SCRIPTS, check_ok, run_mpi
from stable_baselines3 import DQN
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from sb3_parallel_dqn import ParallelDQN


def test_gradients_are_averaged_before_clipping():
    """One step on per-rank halves == SB3's step on the concatenated batch, with and without clipping."""
    result = check_ok(run_mpi([str(MPI_SCRIPTS / "grad_average.py")]))
    assert result.stdout.count("GRADIENTS OK") == 2, result.stdout


# forkserver (SB3's default) also runs 3-step returns: NStepReplayBuffer with 2 envs per rank under MPI.
@pytest.mark.parametrize("start_method, n_steps", [("fork", 1), ("forkserver", 3), ("spawn", 1)])
def test_subproc_workers_ranks_stay_identical(tmp_path, start_method, n_steps):
    # -prepend-rank tags every output line with its rank, so we can tell who printed what.
    script = [str(MPI_SCRIPTS / "train_sync.py"), start_method, str(tmp_path), str(n_steps)]
    result = check_ok(run_mpi(script, timeout=240, mpirun_args=("-prepend-rank",)))
    rank1_lines = [line for line in result.stdout.splitlines() if line.startswith("[1]")]
    assert rank1_lines == []  # only rank 0 prints (verbose=1 on both)

    weights = [np.load(tmp_path / f"weights_rank{rank}.npz") for rank in (0, 1)]
    assert set(weights[0].files) == set(weights[1].files)
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)  # bit-identical

    infos = [json.loads((tmp_path / f"info_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [info["world_size"] for info in infos] == [2, 2]
    # num_timesteps is the global count, identical on both ranks
    assert infos[0]["num_timesteps"] == infos[1]["num_timesteps"] == 2_000
    assert infos[0]["n_updates"] == infos[1]["n_updates"] > 0
    assert infos[0]["buffer"] == ("NStepReplayBuffer" if n_steps > 1 else "ReplayBuffer")
    # seed + rank * n_envs + i: no two envs share a seed
    assert infos[0]["env_seeds"] == [7, 8]
    assert infos[1]["env_seeds"] == [9, 10]
    # the logged episode statistics cover both ranks' episodes
    all_rewards = infos[0]["local_episode_rewards"] + infos[1]["local_episode_rewards"]
    assert infos[0]["global_episode_means"]["r"] == pytest.approx(np.mean(all_rewards))
    assert infos[0]["global_episode_means"] == infos[1]["global_episode_means"]

    # rank 0 alone wrote tensorboard logs and the model
    assert [p.name for p in (tmp_path / "tb").iterdir()] == ["ParallelDQN_1"]
    assert (tmp_path / "model.zip").exists()


def test_model_saved_under_mpi_loads_in_a_plain_process(tmp_path):
    check_ok(run_mpi([str(MPI_SCRIPTS / "train_sync.py"), "fork", str(tmp_path)], timeout=240))
    rank0_weights = np.load(tmp_path / "weights_rank0.npz")

    ours = ParallelDQN.load(tmp_path / "model.zip", device="cpu")
    stock = DQN.load(tmp_path / "model.zip", device="cpu")
    for name, tensor in ours.policy.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), rank0_weights[name], err_msg=name)
    assert ours.num_timesteps == stock.num_timesteps == 2_000

    observations = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    actions_ours, _ = ours.predict(observations, deterministic=True)
    actions_stock, _ = stock.predict(observations, deterministic=True)
    np.testing.assert_array_equal(actions_ours, actions_stock)

    mean_reward, _ = evaluate_policy(ours, Monitor(gym.make("CartPole-v1")), n_eval_episodes=3)
    assert mean_reward > 0


def test_load_is_local_and_learn_syncs_every_rank_to_rank_zero(tmp_path):
    result = check_ok(run_mpi([str(MPI_SCRIPTS / "load_then_learn.py"), str(tmp_path)], timeout=120))
    assert "rank 0 loaded alone" in result.stdout
    assert result.stdout.count("LOAD OK") == 2


def test_callback_stopping_one_rank_stops_all(tmp_path):
    result = check_ok(run_mpi([str(MPI_SCRIPTS / "stop_one_rank.py"), str(tmp_path)], timeout=120))
    infos = [json.loads((tmp_path / f"stop_rank{rank}.json").read_text()) for rank in (0, 1)]
    # rank 1 stopped after 140 of its steps, rank 0 at the end of that rollout (144): both count 284 global steps
    assert infos[0]["num_timesteps"] == infos[1]["num_timesteps"] == 284
    assert infos[0]["n_updates"] == infos[1]["n_updates"]
    assert infos[0]["num_timesteps_after_more"] == infos[1]["num_timesteps_after_more"] == 284 + 64
    assert result.stdout.count("left learn()") == 2
    # Regression (issue 12, item 6): the checkpoint due at 280 global steps is decided at the rollout boundary, from
    # the step count both ranks agreed on, so both ranks wrote their files (rank 1 used to skip its shard).
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "rl_model_284_steps.zip", "rl_model_replay_buffer_284_steps.rank0.pkl", "rl_model_replay_buffer_284_steps.rank1.pkl"
    ]  # fmt: skip
    # time/episodes counts every rank's episodes once, on every rank
    assert infos[0]["episode_num"] == infos[1]["episode_num"] == infos[0]["monitor_episodes"] + infos[1]["monitor_episodes"]
    # After every rank loaded rank 0's file, rank 1's window holds its own new episodes only; rank 0 keeps its own.
    assert infos[1]["restored_episodes"] == infos[0]["restored_episodes"] > 0  # what the file held
    assert infos[1]["episodes_after_resume"] == infos[1]["new_monitor_episodes"]
    assert infos[0]["episodes_after_resume"] == infos[0]["restored_episodes"] + infos[0]["new_monitor_episodes"]


def test_weight_drift_is_detected_and_names_the_rank():
    result = check_ok(run_mpi([str(MPI_SCRIPTS / "diverge.py")], timeout=120))
    # (both ranks print at once, so their lines may interleave: count substrings, not lines)
    assert result.stdout.count("caught: Weights diverged") == 2, result.stdout
    assert result.stdout.count("rank(s) [1] differ from rank 0") == 2
    # the first check (every 25 updates) after the perturbation
    assert result.stdout.count("after 75 gradient updates") == 2


def test_settings_that_break_lockstep_are_refused_on_every_rank():
    """Regression (issue 12, item 6): every setting that changes the collectives or the model is compared."""
    result = check_ok(run_mpi([str(MPI_SCRIPTS / "lockstep_errors.py")], timeout=120))
    for name in ("n_envs", "episodes", "buffer", "n_steps", "gradient_steps", "batch_size", "double_q", "shapes", "budget"):
        for rank in (0, 1):
            assert f"rank {rank} refused {name}: OK" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("published", [True, False])
@pytest.mark.parametrize("n_gpus, expected", [(0, ["auto", "auto"]), (2, ["cuda:0", "cuda:1"])])
def test_auto_device_spreads_ranks_over_gpus(n_gpus, expected, published):
    """The launcher's local rank needs no collective; without it the constructor computes it once, collectively."""
    args = [str(MPI_SCRIPTS / "device_choice.py"), str(n_gpus)] + ([] if published else ["hide"])
    result = check_ok(run_mpi(args, timeout=60))
    for rank, device in enumerate(expected):
        known = rank if published else None
        assert f"rank {rank} local {known}/{rank} -> {device} / cpu" in result.stdout, result.stdout


def test_users_own_subproc_vec_envs_and_a_lone_load(tmp_path):
    """
    Regression (issue 12, items 1 and 2): with `from mpi4py import MPI` first, the user's own
    make_vec_env(..., vec_env_cls=SubprocVecEnv) works with every start method under mpirun (the workers crashed in
    MPI_Init), and rank 0 alone loads a model with device="auto" before any model was built (it hung).
    """
    ParallelDQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [16]}).save(tmp_path / "model.zip")
    result = check_ok(run_mpi([str(MPI_SCRIPTS / "user_vec_envs.py"), str(tmp_path / "model.zip")], timeout=120))
    assert "rank 0 loaded alone on cpu: OK" in result.stdout, result.stdout + result.stderr
    for start_method in ("None", "forkserver", "spawn"):
        for rank in (0, 1):
            assert f"rank {rank} SubprocVecEnv start_method={start_method}: OK" in result.stdout, result.stdout + result.stderr


def test_exception_on_one_rank_ends_the_job():
    result = run_mpi([str(MPI_SCRIPTS / "crash_one_rank.py")], timeout=60)
    assert result.returncode != 0
    assert "injected failure on rank 1" in result.stderr


def test_prioritized_replay_dueling_n_step_under_mpi(tmp_path):
    """Ape-X style sharded PER: each rank samples its own buffer, weights are normalised by the global max weight."""
    check_ok(run_mpi([str(MPI_SCRIPTS / "prioritized_dueling.py"), str(tmp_path)], timeout=240))
    weights = [np.load(tmp_path / f"weights_rank{rank}.npz") for rank in (0, 1)]
    assert any("value_head" in name for name in weights[0].files)  # the dueling head was built
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)  # bit-identical

    infos = [json.loads((tmp_path / f"info_rank{rank}.json").read_text()) for rank in (0, 1)]
    n_updates = infos[0]["n_updates"]
    assert n_updates == infos[1]["n_updates"] > 0
    local_max = np.array([info["local_max"] for info in infos])
    divided_by = np.array([info["divided_by"] for info in infos])
    assert local_max.shape == divided_by.shape == (2, n_updates)  # one small Allreduce per gradient step
    np.testing.assert_array_equal(divided_by[0], divided_by[1])
    np.testing.assert_array_equal(divided_by[0], local_max.max(axis=0))
    assert (local_max[0] != local_max[1]).any()  # the ranks' own maxima differ, so the global one matters
    assert [info["n_steps"] for info in infos] == [3, 3]
    assert all(info["beta"] > 0.4 for info in infos)
    assert all(info["distinct_priorities"] > 10 for info in infos)  # priorities were written back
