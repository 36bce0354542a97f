"""
Model parallelism (tensor-parallel Q-networks) and the sharded optimizer (ZeRO-1): the scenario job under
``mpirun -np 2`` (the fast tier) and ``-np 4``, a 2x2 mesh, oversubscribed here (the slow tier), and in-process checks.
What each section does: tests/mpi_scripts/model_parallel_scenario.py.
"""

import numpy as np
import pytest
from conftest import MPI_SCRIPTS, REPO_DIR, assert_holds, check_ok, rank_reports, run_main, run_mpi
from stable_baselines3 import DQN

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm, mesh
from sb3_parallel_dqn.distributed.tensor_parallel import split_bounds
from sb3_parallel_dqn.train import main as train_main
from sb3_parallel_dqn.validation import ConfigError

# Stated tolerances. Tensor parallelism sums each matmul in other pieces than one process does: float32 differences
# of 1e-7 per update, which 300 updates on fixed data grow to about 1e-5.
SAME_DATA_TOLERANCE = 1e-4
# The sharded optimizer: bit-identical to plain data parallelism on two data-parallel ranks without clipping; else
# the gradient sums (more ranks) or the clip coefficient (clipping) can differ in their last bits.
ZERO_TOLERANCE = 1e-5
# Sharded forward and backward against the whole network (tensor_parallel_exactness.py): the largest relative error.
EXACTNESS_TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
SECTIONS = ["exactness", "same_data", "zero", "learn", "mesh_error"]


def run_scenario(tmp_path_factory, n_procs):
    out_dir = tmp_path_factory.mktemp(f"model_parallel_{n_procs}")
    check_ok(run_mpi([str(MPI_SCRIPTS / "model_parallel_scenario.py"), str(out_dir)], n_procs=n_procs, timeout=600))
    assert [report["done"] for report in rank_reports(out_dir, "sections", n_procs)] == [SECTIONS] * n_procs
    return rank_reports(out_dir, "results", n_procs)


def assert_shards_equal_the_whole_network(ranks_results: list[dict]) -> None:
    """Every case (MLP even/odd/uneven, dueling, CNN) in float64 and float32, on every rank of one model group."""
    properties = {}
    for rank, results in enumerate(ranks_results):
        exactness = results["exactness"]
        properties[f"rank {rank} checked 7 cases x 2 dtypes"] = len(exactness) == 14
        for case in exactness:
            name = f"rank {rank} {case['case']} {case['dtype']}"
            properties |= {
                f"{name}: at least 2 layers split": case["n_split"] >= 2,
                f"{name}: every gradient has its slice's shape": not case["grad_shape_mismatches"],
                f"{name}: outputs and gradients within tolerance": (
                    case["largest_relative_error"] <= EXACTNESS_TOLERANCE[case["dtype"]]
                ),
                f"{name}: a whole state dict loads into the shards": not case["whole_loads_into_shards_not_equal"],
                f"{name}: the gathered state dict has the whole network's keys": case["gathered_keys_equal"],
                f"{name}: the gathered state dict is the whole network's": not case["gathered_not_equal"],
            }
    assert_holds(properties, [results["exactness"] for results in ranks_results])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return run_scenario(tmp_path_factory, 2)


def test_sharded_forward_and_backward_equal_the_whole_network(two_ranks):
    assert_shards_equal_the_whole_network(two_ranks)


def test_split_training_equals_the_whole_model_on_the_same_data(two_ranks):
    for results in two_ranks:
        assert 0 < results["same_data_relative_difference"] <= SAME_DATA_TOLERANCE


def test_sharded_optimizer_equals_plain_data_parallelism(two_ranks):
    for results in two_ranks:
        assert results["zero_no_clip_bit_identical"]
        assert results["zero_clip_relative_difference"] <= ZERO_TOLERANCE


def test_each_rank_holds_half_of_a_wide_model(two_ranks):
    for results in two_ranks:
        split, whole = results["memory_split"], results["memory_whole"]
        for part in ("parameters", "gradients", "optimizer"):
            assert split[part] <= 0.55 * whole[part], part
        assert split["replay_buffer"] == whole["replay_buffer"] > 0  # every rank of a replica keeps its buffer


def test_split_learning_saves_a_whole_model_that_loads_anywhere(two_ranks):
    for results in two_ranks:
        assert results["num_timesteps"] == 1500 and results["n_updates"] > 0  # one replica: its steps, once
        assert results["lone_load_q_difference"] == 0.0  # a whole model loaded by one rank leaves the split one alone
        assert results["stock_max_difference"] <= 1e-5  # stock SB3 reads the gathered file
        assert results["whole_max_difference"] <= 1e-5  # a whole ParallelDQN too (rank by rank, no collective)
        assert results["reloaded_max_difference"] == 0.0  # back into the split mesh: the same shards
        assert results["resumed_num_timesteps"] == 1800
        # into data parallelism with the sharded optimizer, saved again: weights and Adam moments round-trip exactly
        assert results["reshaped_max_difference"] <= 1e-5 and results["reshaped_round_trip_exact"]
        assert results["reshaped_resumed_num_timesteps"] >= 1800  # 2 replicas: rollouts of 8 global steps
    assert two_ranks[0]["q_split"] == two_ranks[1]["q_split"]  # both ranks compute the whole model's outputs


def test_a_size_that_does_not_divide_the_job_is_refused(two_ranks):
    for results in two_ranks:
        assert "model_parallel_size=3 must be >= 1 and divide the number of MPI ranks (2)" in results["mesh_error"]


@pytest.mark.slow
def test_a_two_by_two_mesh(tmp_path_factory):
    """4 ranks: 2 replicas of 2 shards, with the sharded optimizer across the replicas."""
    four_ranks = run_scenario(tmp_path_factory, 4)
    assert_shards_equal_the_whole_network(four_ranks)  # one model group of 4 ranks
    for results in four_ranks:
        assert 0 < results["same_data_relative_difference"] <= SAME_DATA_TOLERANCE
        assert results["zero_mp_no_clip_bit_identical"]  # 2 data-parallel ranks per shard
        assert results["zero_no_clip_relative_difference"] <= ZERO_TOLERANCE  # 4 data-parallel ranks: sums in another order
        assert results["zero_clip_relative_difference"] <= ZERO_TOLERANCE
        assert results["zero_mp_clip_relative_difference"] <= ZERO_TOLERANCE
        split, whole = results["memory_split"], results["memory_whole"]
        assert split["parameters"] <= 0.55 * whole["parameters"]
        assert split["optimizer"] <= 0.3 * whole["optimizer"]  # split in 2, then sharded over 2 replicas
        assert results["num_timesteps"] >= 1500 and results["resumed_num_timesteps"] >= results["num_timesteps"] + 300
        assert results["stock_max_difference"] <= 1e-5 and results["reloaded_max_difference"] == 0.0
        assert results["reshaped_max_difference"] <= 1e-5 and results["reshaped_round_trip_exact"]  # split in 4


def test_split_bounds_are_tensor_splits():
    assert split_bounds(10, 2) == [0, 5, 10]
    assert split_bounds(10, 3) == [0, 4, 7, 10]  # as torch.tensor_split: the first 10 % 3 parts get one more
    assert split_bounds(33, 4) == [0, 9, 17, 25, 33]


def test_mesh_sizes_are_checked_before_any_work(monkeypatch):
    with pytest.raises(mesh.MeshError, match="divide the number of MPI ranks"):
        mesh.check_size(3, 4)
    with pytest.raises(mesh.MeshError):
        mesh.check_size(0, 1)
    with pytest.raises(ConfigError, match="model_parallel_size"):
        ParallelDQN("MlpPolicy", "CartPole-v1", model_parallel_size=0)
    # the command line: before any env, with the launcher's world size
    monkeypatch.setattr(comm, "launcher_world_size", lambda: 2)
    result = run_main(train_main, ["--env", "CartPole-v1", "--model-parallel-size", "3", "-f", "/nonexistent"])
    assert result.returncode == 2 and "key 'model_parallel_size'" in result.stderr and "divide" in result.stderr


def test_one_process_memory_report():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [64]}, buffer_size=1_000)
    report = model.memory_report()
    n_params = sum(p.numel() for p in model.q_net.parameters())
    assert report["parameters"] == 2 * 4 * n_params  # online and target networks, float32
    assert report["gradients"] == report["optimizer"] // 2 == 4 * n_params  # Adam: two moments
    assert report["replay_buffer"] >= 1_000 * 2 * 4 * 4  # observations and next observations


@pytest.mark.slow
def test_train_split_then_resume_into_data_parallelism_with_the_sharded_optimizer(tmp_path):
    """The command line end to end: a split run with checkpoints and evaluations, resumed as another mesh shape."""
    train = str(REPO_DIR / "scripts" / "train.py")
    # one replica of 2 ranks: each rollout is train_freq 16 x 2 envs = 32 global steps
    common = ["--env", "CartPole-v1", "--n-envs", "2", "-params", "learning_starts:256", "train_freq:16",
              "gradient_steps:8", "policy_kwargs:dict(net_arch=[64, 64])"]  # fmt: skip
    args = [train, *common, "--seed", "0", "--model-parallel-size", "2", "-n", "1024", "-f", str(tmp_path / "split"),
            "--save-freq", "512", "--save-replay-buffer", "--eval-freq", "512", "--eval-episodes", "2",
            "--final-eval-episodes", "2"]  # fmt: skip
    result = check_ok(run_mpi(args, timeout=300))
    run_dir = tmp_path / "split" / "parallel_dqn" / "CartPole-v1_1"
    assert result.stdout.count("Saved model to") == 1 and result.stdout.count("Final evaluation over 2 episodes") == 1
    assert np.load(run_dir / "evaluations.npz")["timesteps"].tolist() == [512, 1024]  # every rank evaluated
    # the ranks of a replica step identical envs: one set of monitor files (rank 0's)
    assert sorted(p.name for p in run_dir.glob("*.monitor.csv")) == ["0.0.monitor.csv", "0.1.monitor.csv"]
    assert DQN.load(run_dir / "CartPole-v1.zip").num_timesteps == 1024  # whole files, stock SB3 reads them
    # the checkpoint at 512 resumes as 2 data-parallel ranks with the sharded optimizer (each rank its buffer shard)
    resume = [train, "--env", "CartPole-v1", "-i", str(run_dir / "rl_model_512_steps.zip"), "-f", str(tmp_path / "dp"),
              "--model-parallel-size", "1", "--shard-optimizer", "--eval-freq", "0", "--final-eval-episodes", "0"]  # fmt: skip
    result = check_ok(run_mpi(resume, timeout=300))
    assert "at 512 global steps, for 512 more" in result.stdout
    resumed = DQN.load(tmp_path / "dp" / "parallel_dqn" / "CartPole-v1_1" / "CartPole-v1.zip")
    assert resumed.num_timesteps == 1024 and len(resumed.policy.optimizer.state) > 0  # Adam's moments gathered back
