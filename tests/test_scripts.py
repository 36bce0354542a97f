"""
The command lines, end to end: train under mpirun, then resume, evaluate and plot the run. The jobs under mpirun
run the scripts for real; the plain-process commands run their ``main`` in this process (``run_main``: the same
code path without an interpreter's start-up), apart from one real ``scripts/evaluate.py`` run.
"""

import re

import numpy as np
import pytest
import yaml
from conftest import REPO_DIR, check_ok, run_main, run_mpi, run_python
from stable_baselines3.common.save_util import load_from_pkl

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.evaluate import main as evaluate_main
from sb3_parallel_dqn.plot import main as plot_main
from sb3_parallel_dqn.train import main as train_main
from sb3_parallel_dqn.zoo.hyperparams import load_hyperparams

TRAIN = str(REPO_DIR / "scripts" / "train.py")
EVALUATE = str(REPO_DIR / "scripts" / "evaluate.py")


# Each rollout is train_freq 16 x 2 envs x 2 ranks = 64 global steps; 1024 is a multiple of it.
TRAIN_ARGS = ["--env", "CartPole-v1", "--seed", "0", "--n-envs", "2", "--save-freq", "1024", "--save-replay-buffer",
              "-params", "learning_starts:512", "train_freq:16", "gradient_steps:8",
              "policy_kwargs:dict(net_arch=[64])"]  # fmt: skip


@pytest.fixture(scope="module")
def mpi_run(tmp_path_factory):
    log_folder = tmp_path_factory.mktemp("logs")
    args = [TRAIN, *TRAIN_ARGS, "-n", "3072", "-f", str(log_folder), "-tb", str(log_folder / "tb"),
            "--eval-freq", "1024", "--eval-episodes", "2", "--final-eval-episodes", "3"]  # fmt: skip
    result = check_ok(run_mpi(args, timeout=240))
    return log_folder, result


def counters(model):
    return {
        "num_timesteps": model.num_timesteps,
        "_total_timesteps": model._total_timesteps,
        "_n_updates": model._n_updates,
        "_n_calls": model._n_calls,
        "exploration_rate": model.exploration_rate,
        "_current_progress_remaining": model._current_progress_remaining,
        "learning_rate": model.policy.optimizer.param_groups[0]["lr"],
    }


def test_train_under_mpirun_writes_one_run_folder(mpi_run):
    log_folder, result = mpi_run
    run_dir = log_folder / "parallel_dqn" / "CartPole-v1_1"
    assert sorted(p.name for p in (log_folder / "parallel_dqn").iterdir()) == ["CartPole-v1_1"]
    assert (run_dir / "CartPole-v1.zip").exists()
    # one monitor file per env of each rank: <rank>.<env index>
    assert sorted(p.name for p in run_dir.glob("*.monitor.csv")) == ["0.0.monitor.csv", "0.1.monitor.csv",
                                                                     "1.0.monitor.csv", "1.1.monitor.csv"]  # fmt: skip
    # config.yml is a zoo-format file with one entry, the overrides applied, readable by the loader
    hyperparams, entry = load_hyperparams("CartPole-v1", run_dir / "CartPole-v1" / "config.yml")
    assert entry == "CartPole-v1" and hyperparams["train_freq"] == 16 and hyperparams["n_envs"] == 2
    assert hyperparams["policy_kwargs"] == {"net_arch": [64]} and hyperparams["batch_size"] == 64  # from the config
    args = yaml.safe_load((run_dir / "CartPole-v1" / "args.yml").read_text())
    assert args["save_freq"] == 1024 and args["seed"] == 0
    assert (run_dir / "command.txt").read_text().startswith("mpirun -np 2 ")
    # rank 0 alone reports and writes tensorboard, once
    assert result.stdout.count("Saved model to") == 1
    assert [p.name for p in (log_folder / "tb").iterdir()] == ["ParallelDQN_1"]
    assert re.search(r"Final evaluation over 3 episodes: mean return [\d.]+ \+/- [\d.]+", result.stdout)
    # periodic evaluation on rank 0 every 1024 global steps, best model kept as in the zoo
    assert np.load(run_dir / "evaluations.npz")["timesteps"].tolist() == [1024, 2048, 3072]
    assert (run_dir / "best_model.zip").exists()
    assert re.search(r"Best model \(.*best_model.zip\) over 3 episodes: mean return [\d.]+", result.stdout)
    # checkpoints on rollout boundaries, each with one replay buffer shard per rank, and the final buffers
    for step in (1024, 2048, 3072):
        assert ParallelDQN.load(run_dir / f"rl_model_{step}_steps.zip").num_timesteps == step
        assert (run_dir / f"rl_model_replay_buffer_{step}_steps.rank0.pkl").exists()
        assert (run_dir / f"rl_model_replay_buffer_{step}_steps.rank1.pkl").exists()
    assert sorted(p.name for p in run_dir.glob("replay_buffer*")) == ["replay_buffer.rank0.pkl", "replay_buffer.rank1.pkl"]
    assert not list(run_dir.rglob(".*tmp*"))  # no temporary file left behind


# 23 s. The fast tier resumes exactly in test_checkpoints.py, and under mpirun in test_resume_with_another_world_size.
@pytest.mark.slow
def test_resume_under_mpirun_continues_exactly(mpi_run):
    """Training 1024 steps then resuming for the rest gives the counters of the uninterrupted 3072-step run."""
    log_folder, _ = mpi_run
    run_dir = log_folder / "parallel_dqn" / "CartPole-v1_1"
    resume_folder = log_folder / "resumed"
    args = [TRAIN, "--env", "CartPole-v1", "-i", str(run_dir / "rl_model_1024_steps.zip"), "-f", str(resume_folder),
            "--seed", "7", "--save-replay-buffer", "--eval-freq", "0", "--final-eval-episodes", "0"]  # fmt: skip
    result = check_ok(run_mpi(args, timeout=240))
    assert "Resuming from" in result.stdout and "at 1024 global steps, for 2048 more" in result.stdout
    resumed_dir = resume_folder / "parallel_dqn" / "CartPole-v1_1"
    # the env settings came from the resumed run's own config.yml
    assert load_hyperparams("CartPole-v1", resumed_dir / "CartPole-v1" / "config.yml")[0]["n_envs"] == 2
    uninterrupted = ParallelDQN.load(run_dir / "CartPole-v1.zip")
    resumed = ParallelDQN.load(resumed_dir / "CartPole-v1.zip")
    assert counters(resumed) == counters(uninterrupted)
    assert counters(resumed)["num_timesteps"] == 3072
    for rank in (0, 1):  # every rank reloaded its own shard: the buffers hold as many transitions
        buffers = [load_from_pkl(d / f"replay_buffer.rank{rank}.pkl") for d in (run_dir, resumed_dir)]
        assert buffers[0].pos == buffers[1].pos == 3072 // 4 and not buffers[1].full


def test_resume_with_another_world_size(mpi_run, tmp_path):
    """A 2-rank checkpoint with its replay buffer shards resumes on one process, which reloads shard 0."""
    log_folder, _ = mpi_run
    checkpoint = log_folder / "parallel_dqn" / "CartPole-v1_1" / "rl_model_2048_steps.zip"
    args = ["--env", "CartPole-v1", "-f", tmp_path, "--eval-freq", "0", "--final-eval-episodes", "0"]
    result = check_ok(run_main(train_main, [*args, "-i", checkpoint, "--save-replay-buffer"]))
    assert "Replay buffers saved by 2 rank(s), resumed on 1: rank r loads shard r mod 2" in result.stdout
    assert "at 2048 global steps, for 1024 more" in result.stdout
    run_dir = tmp_path / "parallel_dqn" / "CartPole-v1_1"
    assert ParallelDQN.load(run_dir / "CartPole-v1.zip").num_timesteps == 3072
    # shard 0 (1024 rows of rank 0, 2 envs each) went on from where it was: 1024 more global steps, 512 more rows
    saved = load_from_pkl(checkpoint.with_name("rl_model_replay_buffer_2048_steps.rank0.pkl"))
    resumed = load_from_pkl(run_dir / "replay_buffer.pkl")
    assert resumed.pos == saved.pos + 1024 // 2
    np.testing.assert_array_equal(resumed.observations[: saved.pos], saved.observations[: saved.pos])


def evaluate_returns(result):
    match = re.search(r"CartPole-v1: mean return ([\d.]+) \+/- ([\d.]+) over (\d+) episodes \(seed (\d+)\)", result.stdout)
    assert match, result.stdout + result.stderr
    returns = [float(r) for r in re.search(r"returns: (.*)", result.stdout).group(1).split()]
    assert len(returns) == int(match.group(3)) and float(match.group(1)) == pytest.approx(np.mean(returns), abs=0.01)
    return returns


def test_evaluate_saved_model_without_mpi(mpi_run):
    log_folder, _ = mpi_run
    model = log_folder / "parallel_dqn" / "CartPole-v1_1" / "CartPole-v1.zip"
    # the one real process: the script itself, as a user runs it
    result = check_ok(run_python([EVALUATE, "--model", str(model), "--env", "CartPole-v1", "--episodes", "4", "--seed", "5"]))
    assert len(evaluate_returns(result)) == 4


@pytest.mark.parametrize(
    "which, loaded",
    [([], "CartPole-v1.zip"), (["--load-best"], "best_model.zip"), (["--load-checkpoint", "2048"], "rl_model_2048_steps.zip"),
     (["--load-last-checkpoint"], "rl_model_3072_steps.zip")],
)  # fmt: skip
def test_evaluate_a_run_of_the_log_folder(mpi_run, which, loaded):
    log_folder, _ = mpi_run
    args = ["--env", "CartPole-v1", "-f", log_folder, "--exp-id", "1", *which, "-n", "2", "--seed", "1"]
    result = check_ok(run_main(evaluate_main, args))
    assert f"Loaded {log_folder / 'parallel_dqn' / 'CartPole-v1_1' / loaded}" in result.stdout
    assert "CartPole-v1/config.yml" in result.stdout  # env rebuilt from the run's own config
    assert len(evaluate_returns(result)) == 2


@pytest.mark.parametrize(
    "which, message",
    [(["--exp-id", "9"], "no run CartPole-v1_9"), (["--load-checkpoint", "5"], "no checkpoint at step 5"),
     (["--env", "Acrobot-v1"], "no run of Acrobot-v1")],
)  # fmt: skip
def test_evaluate_missing_model(mpi_run, which, message):
    log_folder, _ = mpi_run
    result = run_main(evaluate_main, ["--env", "CartPole-v1", "-f", log_folder, *which])
    assert result.returncode == 2 and message in result.stderr, result.stdout + result.stderr


def test_plot_the_run(mpi_run, tmp_path):
    log_folder, _ = mpi_run
    output = tmp_path / "curves.png"
    result = check_ok(run_main(plot_main, ["-f", log_folder, "--env", "CartPole-v1", "-o", output]))
    assert str(output) in result.stdout
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_gets_the_next_id(tmp_path):
    args = ["--env", "CartPole-v1", "-n", "200", "-f", tmp_path, "--final-eval-episodes", "0", "--verbose", "0",
            "-params", "learning_starts:50", "policy_kwargs:dict(net_arch=[8])"]  # fmt: skip
    check_ok(run_main(train_main, args))
    check_ok(run_main(train_main, args))
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
    result = run_main(train_main, ["-f", tmp_path, *extra])
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert not (tmp_path / "parallel_dqn").exists()  # failed before creating anything


def test_the_action_space_is_checked_after_the_configs_env_wrappers(tmp_path):
    """A Box env is refused, unless the config's env_wrapper makes its actions Discrete."""
    args = ["--env", "Pendulum-v1", "-n", "300", "-f", tmp_path, "--eval-freq", "0", "--final-eval-episodes", "0"]
    refused = run_main(train_main, args)
    assert refused.returncode == 2 and "Discrete action space" in refused.stderr
    wrapper = "env_wrapper:[{'gymnasium.wrappers.DiscretizeAction': {'bins': 3}}]"
    check_ok(run_main(train_main, [*args, "-params", wrapper, "learning_starts:100"]))
    assert ParallelDQN.load(tmp_path / "parallel_dqn" / "Pendulum-v1_1" / "Pendulum-v1.zip").action_space.n == 3


@pytest.mark.slow
def test_normalized_run_keeps_its_statistics(tmp_path):
    """normalize: rank 0's VecNormalize statistics are saved with the run and its checkpoints, and reused."""
    args = [TRAIN, "--env", "CartPole-v1", "-n", "512", "--seed", "0", "-f", str(tmp_path), "--save-freq", "256",
            "--eval-freq", "256", "--eval-episodes", "1", "--final-eval-episodes", "2", "--verbose", "0",
            "-params", "normalize:dict(norm_obs=True, norm_reward=False)", "learning_starts:100", "train_freq:16",
            "gradient_steps:4", "policy_kwargs:dict(net_arch=[16])"]  # fmt: skip
    result = check_ok(run_mpi(args, timeout=240))
    assert "Final evaluation over 2 episodes" in result.stdout
    run_dir = tmp_path / "parallel_dqn" / "CartPole-v1_1"
    # the override is stored as text in config.yml and reads back
    saved, _ = load_hyperparams("CartPole-v1", run_dir / "CartPole-v1" / "config.yml")
    assert saved["normalize"] == {"norm_obs": True, "norm_reward": False}
    stats = load_from_pkl(run_dir / "CartPole-v1" / "vecnormalize.pkl")
    assert stats.obs_rms.count > 256  # rank 0's running statistics, not fresh ones
    assert (run_dir / "rl_model_vecnormalize_256_steps.pkl").exists()
    result = check_ok(run_python([EVALUATE, "--env", "CartPole-v1", "-f", str(tmp_path), "-n", "2", "--seed", "3"]))
    assert len(evaluate_returns(result)) == 2
    # a resumed run starts from the checkpoint's statistics
    resume_args = [TRAIN, "--env", "CartPole-v1", "-i", str(run_dir / "rl_model_256_steps.zip"), "-f", str(tmp_path),
                   "--eval-freq", "0", "--final-eval-episodes", "0", "--verbose", "0"]  # fmt: skip
    resumed = check_ok(run_python(resume_args))
    assert "at 256 global steps" in resumed.stdout
    resumed_stats = load_from_pkl(tmp_path / "parallel_dqn" / "CartPole-v1_2" / "CartPole-v1" / "vecnormalize.pkl")
    checkpoint_stats = load_from_pkl(run_dir / "rl_model_vecnormalize_256_steps.pkl")
    # rank 0 saw ~128 of the first 256 steps; the resumed process adds its 256 (and resets) to those, where fresh
    # statistics would hold only its own
    assert checkpoint_stats.obs_rms.count > 100
    assert resumed_stats.obs_rms.count - checkpoint_stats.obs_rms.count >= 256


@pytest.mark.slow
def test_resume_with_another_n_envs_and_replay_shards_is_refused(mpi_run, tmp_path):
    log_folder, _ = mpi_run
    checkpoint = log_folder / "parallel_dqn" / "CartPole-v1_1" / "rl_model_2048_steps.zip"
    args = [TRAIN, "--env", "CartPole-v1", "-i", str(checkpoint), "--n-envs", "1", "-f", str(tmp_path)]
    result = run_mpi(args, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("holds 2 env(s) per rank") == 1, result.stderr
