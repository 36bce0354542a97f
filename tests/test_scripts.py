"""The command-line scripts, end to end: train under mpirun, then evaluate the saved model in a plain process."""

import re

import numpy as np
import pytest
import yaml
from conftest import REPO_DIR, check_ok, run_mpi, run_python

TRAIN = str(REPO_DIR / "scripts" / "train.py")
EVALUATE = str(REPO_DIR / "scripts" / "evaluate.py")


@pytest.fixture(scope="module")
def mpi_run(tmp_path_factory):
    log_folder = tmp_path_factory.mktemp("logs")
    args = [TRAIN, "--env", "CartPole-v1", "-n", "3000", "--seed", "0", "-f", str(log_folder), "--n-envs", "2",
            "--eval-freq", "1000", "--eval-episodes", "2", "--final-eval-episodes", "3",
            "-params", "learning_starts:500", "train_freq:16", "gradient_steps:8"]  # fmt: skip
    result = check_ok(run_mpi(args, timeout=240))
    return log_folder, result


def test_train_under_mpirun_writes_one_run_folder(mpi_run):
    log_folder, result = mpi_run
    run_dir = log_folder / "parallel_dqn" / "CartPole-v1_1"
    assert sorted(p.name for p in (log_folder / "parallel_dqn").iterdir()) == ["CartPole-v1_1"]
    assert (run_dir / "CartPole-v1.zip").exists()
    # one monitor file per env of each rank: global env indices 0..3
    assert sorted(p.name for p in run_dir.glob("*.monitor.csv")) == [f"{i}.monitor.csv" for i in range(4)]
    config = yaml.safe_load((run_dir / "CartPole-v1" / "config.yml").read_text())
    assert config["entry"] == "CartPole-v1" and config["train_freq"] == 16 and config["n_envs"] == 2
    assert "mpirun -np 2" in (run_dir / "command.txt").read_text()
    # rank 0 alone reports, once
    assert result.stdout.count("Saved model to") == 1
    assert re.search(r"Final evaluation over 3 episodes: mean return [\d.]+ \+/- [\d.]+", result.stdout)
    # periodic evaluation on rank 0 every 1000 global steps (3 of them), best model kept as in the zoo
    assert len(np.load(run_dir / "evaluations.npz")["timesteps"]) == 3
    assert (run_dir / "best_model.zip").exists()
    assert re.search(r"Best model \(.*best_model.zip\) over 3 episodes: mean return [\d.]+", result.stdout)


def test_evaluate_saved_model_without_mpi(mpi_run):
    log_folder, _ = mpi_run
    model = log_folder / "parallel_dqn" / "CartPole-v1_1" / "CartPole-v1.zip"
    result = check_ok(run_python([EVALUATE, "--model", str(model), "--env", "CartPole-v1", "--episodes", "4", "--seed", "5"]))
    match = re.search(r"CartPole-v1: mean return ([\d.]+) \+/- ([\d.]+) over 4 episodes \(seed 5\)", result.stdout)
    assert match, result.stdout
    returns = [float(r) for r in re.search(r"returns: (.*)", result.stdout).group(1).split()]
    assert len(returns) == 4 and float(match.group(1)) == pytest.approx(sum(returns) / 4, abs=0.01)


def test_second_run_gets_the_next_id(tmp_path):
    args = [TRAIN, "--env", "CartPole-v1", "-n", "200", "-f", str(tmp_path), "--final-eval-episodes", "0", "--verbose", "0",
            "-params", "learning_starts:50", "policy_kwargs:dict(net_arch=[8])"]  # fmt: skip
    check_ok(run_python(args))
    check_ok(run_python(args))
    assert sorted(p.name for p in (tmp_path / "parallel_dqn").iterdir()) == ["CartPole-v1_1", "CartPole-v1_2"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--env", "NoSuchEnv-v0"], "NoSuchEnv"),
        (["-params", "learning_rat:0.1"], "did you mean 'learning_rate'"),
        (["-params", "policy_kwargs:dict(net_arch=__import__('os').getcwd())"], "policy_kwargs"),
        (["-params", "batch_size:0"], "batch_size"),
    ],
)
def test_bad_input_exits_with_code_2(tmp_path, extra, message):
    result = run_python([TRAIN, "-f", str(tmp_path), *extra])
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert not (tmp_path / "parallel_dqn").exists()  # failed before creating anything
