"""
Scale-out (issue 16): the data-parallel properties at W = 4 and 8 ranks (oversubscribed here: correctness only, small
budgets), resuming into another world size, a fault on one rank of 8, and the hostfile launch of the docs' clusters page.
"""

import itertools
import re
import shlex
import sys
import time

import numpy as np
import pytest
from conftest import (
    MPI_SCRIPTS,
    REPO_DIR,
    assert_holds,
    check_ok,
    diverged_properties,
    mpirun_path,
    rank_reports,
    run_command,
    run_mpi,
)
from stable_baselines3.common.save_util import load_from_pkl
from test_faults import ended_by_the_fault, job_details

from sb3_parallel_dqn import ParallelDQN

pytestmark = pytest.mark.slow
TRAIN = str(REPO_DIR / "scripts" / "train.py")
SECTIONS = ["train", "prioritized", "stop", "diverge"]


@pytest.fixture(scope="module", params=[8], ids=["W8"])
def scenario(request, tmp_path_factory):
    """One scale_scenario.py job at W ranks (8: the largest this package claims; 2 ranks run in test_mpi): its world
    size, output folder and stdout."""
    world_size = request.param
    out_dir = tmp_path_factory.mktemp(f"scale{world_size}")
    result = check_ok(run_mpi([str(MPI_SCRIPTS / "scale_scenario.py"), str(out_dir)], n_procs=world_size, timeout=600))
    return world_size, out_dir, result.stdout


def infos(out_dir, section, world_size, name=None):
    return rank_reports(out_dir / section, name or section, world_size)


def test_every_section_ran_on_every_rank(scenario):
    world_size, out_dir, _ = scenario
    assert [report["done"] for report in rank_reports(out_dir, "sections", world_size)] == [SECTIONS] * world_size


def test_ranks_identical_budget_honoured_no_seed_collisions(scenario):
    world_size, out_dir, _ = scenario
    runs = infos(out_dir, "train", world_size)
    assert {run["world_size"] for run in runs} == {world_size}
    # bit-identical weights and Adam state on every rank
    assert len({run["weights"] for run in runs}) == 1 and len({run["optimizer"] for run in runs}) == 1
    assert len({run["n_updates"] for run in runs}) == 1 and runs[0]["n_updates"] > 0
    # the global budget: every rank counts it, and the ranks' own steps add up to it
    assert [run["num_timesteps"] for run in runs] == [4096] * world_size
    assert sum(run["own_env_steps"] for run in runs) == 4096
    # env i of rank r is seeded 3 + 2 r + i: all 2 W seeds differ, and so do the first observations they gave
    assert [run["env_seeds"] for run in runs] == [[3 + 2 * r, 4 + 2 * r] for r in range(world_size)]
    first_obs = [tuple(obs) for run in runs for obs in run["first_obs"]]
    assert len(first_obs) == 2 * world_size and len(set(first_obs)) == 2 * world_size


def test_prioritized_weights_divided_by_the_max_over_all_ranks(scenario):
    world_size, out_dir, _ = scenario
    runs = infos(out_dir, "prioritized", world_size, "info")
    local_max = np.array([run["local_max"] for run in runs])
    divided_by = np.array([run["divided_by"] for run in runs])
    assert local_max.shape == divided_by.shape == (world_size, runs[0]["n_updates"])
    for rank in range(world_size):
        np.testing.assert_array_equal(divided_by[rank], local_max.max(axis=0))
    # the maximum is some other rank's at some steps, so the global one matters
    assert (local_max.argmax(axis=0) != 0).any() and (local_max[0] < local_max.max(axis=0)).any()
    for rank_a, rank_b in itertools.combinations(range(world_size), 2):
        weights = [np.load(out_dir / "prioritized" / f"weights_rank{r}.npz") for r in (rank_a, rank_b)]
        for name in weights[0].files:
            np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)


def test_a_callback_stopping_one_rank_stops_all(scenario):
    world_size, out_dir, _ = scenario
    runs = infos(out_dir, "stop", world_size)
    # rank 1 stopped after 140 of its steps, every other rank at the end of that rollout (144 steps)
    assert {run["num_timesteps"] for run in runs} == {140 + 144 * (world_size - 1)}
    assert len({run["n_updates"] for run in runs}) == 1
    assert {run["num_timesteps_after_more"] for run in runs} == {140 + 144 * (world_size - 1) + 16 * world_size}
    for key in ("progress", "exploration_rate", "n_calls", "target", "weights_after_train"):
        assert len({run[key] for run in runs}) == 1, key
    # every checkpoint zip has all W replay buffer shards
    files = {p.name for p in (out_dir / "stop" / "ckpt").iterdir()}
    zips = {name for name in files if name.endswith(".zip")}
    assert zips
    for name in zips:
        steps = re.fullmatch(r"rl_model_(\d+)_steps\.zip", name).group(1)
        assert {f"rl_model_replay_buffer_{steps}_steps.rank{r}.pkl" for r in range(world_size)} <= files
    # time/episodes counts every rank's episodes once, on every rank
    assert {run["episode_num"] for run in runs} == {sum(run["monitor_episodes"] for run in runs)}
    for rank, run in enumerate(runs):
        restored_here = run["restored_episodes"] if rank == 0 else 0
        assert run["episodes_after_resume"] == restored_here + run["new_monitor_episodes"]


def test_weight_drift_on_one_rank_is_caught_on_every_rank(scenario):
    world_size, out_dir, _ = scenario
    caught = [report["caught"] for report in infos(out_dir, "diverge", world_size)]
    assert_holds(diverged_properties(caught), caught)


def train_args(folder, *extra):
    return [TRAIN, "--env", "CartPole-v1", "-f", str(folder), "--eval-freq", "0", "--final-eval-episodes", "0",
            "--save-replay-buffer", *extra]  # fmt: skip


def test_checkpoints_resume_into_other_world_sizes(tmp_path):
    """4 ranks -> 2 ranks (each keeps its own shard, 2-3 left out) -> 4 ranks (ranks 2, 3 start from copies)."""
    first, two, four = tmp_path / "first", tmp_path / "two", tmp_path / "four"
    check_ok(run_mpi(train_args(first, "-n", "2048", "--save-freq", "1024"), n_procs=4, timeout=400))
    first_dir = first / "parallel_dqn" / "CartPole-v1_1"
    checkpoint = first_dir / "rl_model_1024_steps.zip"
    result = check_ok(run_mpi(train_args(two, "-i", str(checkpoint), "-n", "1024"), n_procs=2, timeout=300))
    assert "resumed on 2: rank r loads shard r mod 4; shards 2-3 are left out" in result.stdout
    assert "at 1024 global steps, for 1024 more" in result.stdout
    two_dir = two / "parallel_dqn" / "CartPole-v1_1"
    assert ParallelDQN.load(two_dir / "CartPole-v1.zip").num_timesteps == 2048
    # the shipped entry: 1 env per rank; 1024 global steps on 4 ranks are 256 rows per rank, 1024 on 2 ranks 512 more
    for rank in (0, 1):
        saved = load_from_pkl(first_dir / f"rl_model_replay_buffer_1024_steps.rank{rank}.pkl")
        resumed = load_from_pkl(two_dir / f"replay_buffer.rank{rank}.pkl")
        assert (saved.pos, resumed.pos) == (256, 256 + 512)
        np.testing.assert_array_equal(resumed.observations[:256], saved.observations[:256])

    result = check_ok(run_mpi(train_args(four, "-i", str(two_dir / "CartPole-v1.zip"), "-n", "1024"), n_procs=4, timeout=300))
    assert "resumed on 4: rank r loads shard r mod 2; the extra ranks start from copies of them" in result.stdout
    four_dir = four / "parallel_dqn" / "CartPole-v1_1"
    assert ParallelDQN.load(four_dir / "CartPole-v1.zip").num_timesteps == 3072
    for rank in range(4):
        saved = load_from_pkl(two_dir / f"replay_buffer.rank{rank % 2}.pkl")
        resumed = load_from_pkl(four_dir / f"replay_buffer.rank{rank}.pkl")
        assert resumed.pos == saved.pos + 1024 // 4
        np.testing.assert_array_equal(resumed.observations[: saved.pos], saved.observations[: saved.pos])
    # 2 shards cannot be shared evenly by 3 ranks: refused before training, once
    result = run_mpi(train_args(tmp_path / "three", "-i", str(two_dir / "CartPole-v1.zip"), "-n", "512"), n_procs=3)
    assert result.returncode == 2 and result.stderr.count("cannot be shared evenly by 3 ranks") == 1, result.stderr


def test_an_exception_on_one_rank_of_8_ends_the_job(tmp_path):
    result = run_mpi([str(MPI_SCRIPTS / "fault_one_rank.py"), "train", str(tmp_path)], n_procs=8, timeout=300)
    ended = time.time()
    properties = ended_by_the_fault(result, ended, tmp_path)
    properties["the fault's message once on stderr"] = (
        result.stderr.count("RuntimeError: injected failure in train on rank 1") == 1
    )
    assert_holds(properties, job_details(result, tmp_path))


def documented_hostfile_command() -> list[str]:
    """The hostfile launch of docs/guide/clusters.rst, as written there (in a code block: indented)."""
    text = (REPO_DIR / "docs" / "guide" / "clusters.rst").read_text()
    match = re.search(r"^\s*(mpirun -f hostfile .*)$", text, re.MULTILINE)
    assert match, "docs/guide/clusters.rst has no 'mpirun -f hostfile ...' command"
    return shlex.split(match.group(1))


def test_the_documented_hostfile_launch_runs_here(tmp_path):
    """docs/guide/clusters.rst's MPICH/Hydra command with a hostfile that names this machine (localhost:2)."""
    (tmp_path / "hostfile").write_text("localhost:2\n")
    command = documented_hostfile_command()
    # this environment's mpirun and python; the rest (options, script, arguments) exactly as documented
    command = [mpirun_path() if part == "mpirun" else sys.executable if part == "python" else part for part in command]
    command = [str(REPO_DIR / part) if part.startswith("scripts/") else part for part in command]
    result = check_ok(run_command([*command, "-n", "2048", "--eval-freq", "0", "--final-eval-episodes", "0"],
                                  timeout=300, cwd=tmp_path))  # fmt: skip
    assert "Training CartPole-v1 on 2 process(es)" in result.stdout
    model = ParallelDQN.load(next((tmp_path / "logs").rglob("CartPole-v1.zip")))
    assert model.num_timesteps == 2048
