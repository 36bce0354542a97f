"""
Data-parallel behaviour under a real ``mpirun -np 2``. Most properties come from one scenario job
(mpi_scripts/training_scenario.py, one section per property group) that the tests below read; a few need a job of
their own (their settings would break the others). Each job runs with a timeout, so a hang fails fast. The jobs'
scripts report what each rank measured as JSON values (mpi_scripts/report.py), which the tests compare here.
"""

import multiprocessing

import gymnasium as gym
import numpy as np
import pytest
from conftest import MPI_SCRIPTS, assert_holds, check_ok, diverged_properties, rank_reports, run_mpi
from stable_baselines3 import DQN
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from sb3_parallel_dqn import ParallelDQN


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """The scenario job's output folder and its stdout (-prepend-rank tags every line with the rank that printed it)."""
    out_dir = tmp_path_factory.mktemp("scenario")
    result = check_ok(
        run_mpi([str(MPI_SCRIPTS / "training_scenario.py"), str(out_dir)], timeout=300, mpirun_args=("-prepend-rank",))
    )
    return out_dir, result.stdout


SECTIONS = ["gradients", "train_sync", "prioritized", "stop", "load", "diverge"]
# What every rank of lockstep_errors.py must be told, case by case: the setting, with each rank's value.
LOCKSTEP_MESSAGES = {
    "n_envs": "n_envs: [1, 2]",
    "episodes": "counts episodes",
    "buffer": "replay_buffer_class: ['ReplayBuffer', 'Prioritized",
    "n_steps": "n_steps: [1, 3]",
    "gradient_steps": "gradient_steps: [1, 2]",
    "batch_size": "batch_size: [32, 64]",
    "double_q": "double_q: [False, True]",
    "shapes": "parameters: [[('q_net.q_net.0.weight', (16, 4)), ",
    "budget": "total_timesteps: [1000, 1001]",
}


def section_infos(folder, name="info"):
    return rank_reports(folder, name, 2)


def test_every_section_ran_on_both_ranks(scenario):
    out_dir, _ = scenario
    assert [report["done"] for report in rank_reports(out_dir, "sections", 2)] == [SECTIONS, SECTIONS]


def test_gradients_are_averaged_before_clipping(scenario):
    """One step on per-rank halves == SB3's step on the concatenated batch, with and without clipping."""
    out_dir, _ = scenario
    reports = rank_reports(out_dir / "gradients", "gradients", 2)
    properties, details = {}, {}
    for max_grad_norm in ("1e+09", "0.05"):
        key = f"max_grad_norm={max_grad_norm}"
        ours, reference = reports[0][key], np.array(reports[0][key]["reference_delta"])
        delta = np.array(ours["delta"])
        properties |= {
            f"{key}: SB3 starts from the same weights": ours["reference_starts_equal"],
            f"{key}: the update is not trivially small": np.abs(reference).max() > 1e-3,
            # as np.testing.assert_allclose(delta, reference, rtol=1e-5, atol=1e-6)
            f"{key}: the weight change is SB3's": np.allclose(delta, reference, rtol=1e-5, atol=1e-6),
            f"{key}: the loss is SB3's": abs(ours["loss"] - ours["reference_loss"]) < 1e-6,
            f"{key}: the ranks hold the same weights after": reports[0][key]["weights_crc"] == reports[1][key]["weights_crc"],
        }
        details[key] = {
            "max |delta - SB3's|": float(np.abs(delta - reference).max()),
            "max |SB3's delta|": float(np.abs(reference).max()),
            "losses (ours, SB3's)": (ours["loss"], ours["reference_loss"]),
            "weight checksums by rank": [report[key]["weights_crc"] for report in reports],
        }
    assert_holds(properties, details)


def test_subproc_workers_ranks_stay_identical(scenario):
    """2 SubprocVecEnv workers per rank (forkserver) with 3-step returns: NStepReplayBuffer under MPI."""
    out_dir, stdout = scenario
    folder = out_dir / "train_sync"
    # only rank 0 prints the training logs (verbose=1 on both)
    assert "rollout/" in stdout and not [line for line in stdout.splitlines() if line.startswith("[1]") and "/" in line]

    weights = [np.load(folder / f"weights_rank{rank}.npz") for rank in (0, 1)]
    assert set(weights[0].files) == set(weights[1].files)
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)  # bit-identical

    infos = section_infos(folder)
    assert [info["world_size"] for info in infos] == [2, 2]
    # num_timesteps is the global count, identical on both ranks
    assert infos[0]["num_timesteps"] == infos[1]["num_timesteps"] == 2_000
    assert infos[0]["n_updates"] == infos[1]["n_updates"] > 0
    assert infos[0]["buffer"] == "NStepReplayBuffer"
    # seed + rank * n_envs + i: no two envs share a seed
    assert infos[0]["env_seeds"] == [7, 8]
    assert infos[1]["env_seeds"] == [9, 10]
    # the logged episode statistics cover both ranks' episodes
    all_rewards = infos[0]["local_episode_rewards"] + infos[1]["local_episode_rewards"]
    assert infos[0]["global_episode_means"]["r"] == pytest.approx(np.mean(all_rewards))
    assert infos[0]["global_episode_means"] == infos[1]["global_episode_means"]

    # rank 0 alone wrote tensorboard logs and the model
    assert [p.name for p in (folder / "tb").iterdir()] == ["ParallelDQN_1"]
    assert (folder / "model.zip").exists()


def test_model_saved_under_mpi_loads_in_a_plain_process(scenario):
    out_dir, _ = scenario
    folder = out_dir / "train_sync"
    rank0_weights = np.load(folder / "weights_rank0.npz")

    ours = ParallelDQN.load(folder / "model.zip", device="cpu")
    stock = DQN.load(folder / "model.zip", device="cpu")
    for name, tensor in ours.policy.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), rank0_weights[name], err_msg=name)
    assert ours.num_timesteps == stock.num_timesteps == 2_000

    observations = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    actions_ours, _ = ours.predict(observations, deterministic=True)
    actions_stock, _ = stock.predict(observations, deterministic=True)
    np.testing.assert_array_equal(actions_ours, actions_stock)
    # evaluate_policy: the same returns on the same seeded episodes (the old "mean return > 0" could not fail)
    returns = []
    for model in (ours, stock):
        env = Monitor(gym.make("CartPole-v1"))
        env.reset(seed=3)
        returns.append(evaluate_policy(model, env, n_eval_episodes=3, return_episode_rewards=True)[0])
    assert returns[0] == returns[1] and len(returns[0]) == 3


def test_prioritized_replay_dueling_n_step_under_mpi(scenario):
    """Ape-X style sharded PER: each rank samples its own buffer, weights are normalised by the global max weight."""
    out_dir, _ = scenario
    folder = out_dir / "prioritized"
    weights = [np.load(folder / f"weights_rank{rank}.npz") for rank in (0, 1)]
    assert any("value_head" in name for name in weights[0].files)  # the dueling head was built
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)  # bit-identical

    infos = section_infos(folder)
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


def test_callback_stopping_one_rank_stops_all(scenario):
    out_dir, _ = scenario
    folder = out_dir / "stop"
    infos = section_infos(folder, "stop")
    # rank 1 stopped after 140 of its steps, rank 0 at the end of that rollout (144): both count 284 global steps
    assert infos[0]["num_timesteps"] == infos[1]["num_timesteps"] == 284
    assert infos[0]["n_updates"] == infos[1]["n_updates"]
    assert infos[0]["num_timesteps_after_more"] == infos[1]["num_timesteps_after_more"] == 284 + 64
    # Regression (issue 16): the ranks made 140 and 144 steps in the stopped rollout; progress (the learning rate),
    # exploration, the target-update counter and the target network (rank 0's step 143 updated it) must still agree,
    # so that a train() right after learn() keeps the weights identical.
    for key in ("progress", "exploration_rate", "n_calls", "target", "weights_after_train"):
        assert infos[0][key] == infos[1][key], key
    assert infos[0]["n_calls"] == 144
    # Regression (issue 12, item 6): the checkpoint due at 280 global steps is decided at the rollout boundary, from
    # the step count both ranks agreed on, so both ranks wrote their files (rank 1 used to skip its shard).
    assert sorted(p.name for p in (folder / "ckpt").iterdir()) == [
        "rl_model_284_steps.zip", "rl_model_replay_buffer_284_steps.rank0.pkl", "rl_model_replay_buffer_284_steps.rank1.pkl"
    ]  # fmt: skip
    # time/episodes counts every rank's episodes once, on every rank
    assert infos[0]["episode_num"] == infos[1]["episode_num"] == infos[0]["monitor_episodes"] + infos[1]["monitor_episodes"]
    # After every rank loaded rank 0's file, rank 1's window holds its own new episodes only; rank 0 keeps its own.
    assert infos[1]["restored_episodes"] == infos[0]["restored_episodes"] > 0  # what the file held
    assert infos[1]["episodes_after_resume"] == infos[1]["new_monitor_episodes"]
    assert infos[0]["episodes_after_resume"] == infos[0]["restored_episodes"] + infos[0]["new_monitor_episodes"]


def test_load_is_local_and_learn_syncs_every_rank_to_rank_zero(scenario):
    out_dir, _ = scenario
    reports = rank_reports(out_dir / "load", "load", 2)
    properties = {
        "rank 0 loaded and predicted alone": reports[0].get("loaded_alone") is True,
        "the ranks hold the same weights after learn()": reports[0]["checksum"] == reports[1]["checksum"],
        "the ranks hold the same Adam moments after learn()": reports[0]["adam_exp_avg"] == reports[1]["adam_exp_avg"],
        "both ranks count 1000 steps": [report["num_timesteps"] for report in reports] == [1_000, 1_000],
    }
    assert_holds(properties, reports)


def test_weight_drift_is_detected_and_names_the_rank(scenario):
    out_dir, _ = scenario
    caught = [report["caught"] for report in rank_reports(out_dir / "diverge", "diverge", 2)]
    properties = diverged_properties(caught)
    for rank, error in enumerate(caught):
        # the first check (every 25 updates) after the perturbation
        message = (error or {}).get("message", "")
        properties[f"rank {rank}: after 75 gradient updates"] = "after 75 gradient updates" in message
    assert_holds(properties, caught)


def test_settings_that_break_lockstep_are_refused_on_every_rank(tmp_path):
    """
    Regression (issue 12, item 6): every setting that changes the collectives or the model is compared, before any
    training collective. The launcher's local rank is hidden in this job: the constructor computes it, collectively.
    """
    check_ok(run_mpi([str(MPI_SCRIPTS / "lockstep_errors.py"), str(tmp_path)], timeout=120))
    reports = rank_reports(tmp_path, "lockstep", 2)
    properties = {}
    for rank, report in enumerate(reports):
        properties[f"rank {rank} tried every case"] = report["refused"].keys() == LOCKSTEP_MESSAGES.keys()
        for name, expected in LOCKSTEP_MESSAGES.items():
            message = report["refused"].get(name)
            properties[f"rank {rank} refused {name}, saying {expected!r}"] = message is not None and expected in message
        # device="auto" with 2 (pretended) GPUs: cuda:{local rank}, the local rank computed (the launcher's hidden)
        expected_devices = {"published_local_rank": None, "local_rank": rank, "auto": f"cuda:{rank}", "cpu": "cpu"}
        properties[f"rank {rank}'s devices: {expected_devices}"] = report["devices"] == expected_devices
    assert_holds(properties, reports)


@pytest.mark.slow  # 12 s
def test_users_own_subproc_vec_envs_and_a_lone_load(tmp_path):
    """
    Regression (issue 12, items 1 and 2): with `from mpi4py import MPI` first, the user's own
    make_vec_env(..., vec_env_cls=SubprocVecEnv) works with every start method under mpirun (the workers crashed in
    MPI_Init), and rank 0 alone loads a model with device="auto" before any model was built (it hung). The local rank
    comes from the launcher, without a collective.
    """
    ParallelDQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [16]}).save(tmp_path / "model.zip")
    check_ok(run_mpi([str(MPI_SCRIPTS / "user_vec_envs.py"), str(tmp_path / "model.zip"), str(tmp_path)], timeout=120))
    reports = rank_reports(tmp_path, "user_vec_envs", 2)
    properties = {"rank 0 loaded alone on cpu": reports[0].get("lone_load_device") == "cpu"}
    # SB3's default start method is forkserver where available: the script then runs it once, as the default.
    default = "ForkServerProcess" if "forkserver" in multiprocessing.get_all_start_methods() else "SpawnProcess"
    expected_runs = [(None, default), ("spawn", "SpawnProcess")]
    for rank, report in enumerate(reports):
        runs = report["subproc_runs"]
        ran = [(run["start_method"], run["process_class"]) for run in runs if run["start_method"] in (None, "spawn")]
        properties[f"rank {rank} ran start methods {expected_runs}"] = ran == expected_runs
        for run, other in zip(runs, reports[1 - rank]["subproc_runs"], strict=False):
            name = f"rank {rank} SubprocVecEnv start_method={run['start_method']}"
            properties[f"{name}: the ranks hold the same weights"] = run["checksum"] == other["checksum"]
            properties[f"{name}: trained 300 steps"] = run["num_timesteps"] >= 300 and run["n_updates"] > 0
        # the local rank as the launcher published it
        expected_devices = {"published_local_rank": str(rank), "local_rank": rank, "auto": f"cuda:{rank}", "cpu": "cpu"}
        properties[f"rank {rank}'s devices: {expected_devices}"] = report["devices"] == expected_devices
    assert_holds(properties, reports)


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_subproc_workers_with_other_start_methods(tmp_path, start_method):
    """ParallelSubprocVecEnv under mpirun with the start methods the scenario does not use."""
    check_ok(run_mpi([str(MPI_SCRIPTS / "train_sync.py"), start_method, str(tmp_path)], timeout=240))
    weights = [np.load(tmp_path / f"weights_rank{rank}.npz") for rank in (0, 1)]
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)
    infos = section_infos(tmp_path)
    assert infos[0]["num_timesteps"] == infos[1]["num_timesteps"] == 2_000
    assert infos[0]["env_seeds"] == [7, 8] and infos[1]["env_seeds"] == [9, 10]
