"""rl_zoo3 integration: ``python -m sb3_parallel_dqn.zoo`` trains ParallelDQN with the zoo's own train script."""

import csv
import importlib.util

import gymnasium as gym
import numpy as np
import pytest
import yaml
from conftest import check_ok, run_mpi, run_python
from stable_baselines3 import DQN
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.zoo.hyperparams import DEFAULT_CONF_FILE, load_hyperparams

requires_zoo = pytest.mark.skipif(importlib.util.find_spec("rl_zoo3") is None, reason="rl_zoo3 (extra 'zoo') not installed")

ZOO = ["-m", "sb3_parallel_dqn.zoo"]
# CartPole's entry trains every train_freq=128 steps (of each rank); a small buffer, fewer gradient steps and an
# earlier start keep a run to seconds while the other values of the entry reach the model unchanged.
FAST = ["--env", "CartPole-v1", "--seed", "0", "-params", "learning_starts:512", "gradient_steps:8", "buffer_size:5000"]
RANDOM_STEPS_PER_RANK_MPI = 256  # learning_starts counts global steps: 2 ranks x 256


def run_dir(log_folder, run_id=1):
    return log_folder / "parallel_dqn" / f"CartPole-v1_{run_id}"


def read_saved(path, name="args.yml"):
    # The zoo dumps OrderedDicts (python/object tags), and reads them back with UnsafeLoader too.
    return dict(yaml.load((path / "CartPole-v1" / name).read_text(), Loader=yaml.UnsafeLoader))


def episodes(monitor_file):
    lines = monitor_file.read_text().splitlines()[1:]  # the first line is a JSON header
    return [(float(row["r"]), int(row["l"])) for row in csv.DictReader(lines)]


def first_episodes(monitor_file, n_steps):
    """The episodes that ended within the first ``n_steps`` steps of that env."""
    result, total = [], 0
    for episode in episodes(monitor_file):
        total += episode[1]
        if total > n_steps:
            break
        result.append(episode)
    return result


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """One process, neither --algo nor -conf: both default to parallel_dqn and zoo_configs/dqn.yml."""
    log_folder = tmp_path_factory.mktemp("zoo")
    result = check_ok(run_python([*ZOO, *FAST, "-n", "1024", "--eval-freq", "-1", "-f", str(log_folder)], timeout=120))
    return run_dir(log_folder), result


REGISTER_TWICE = """
import rl_zoo3, rl_zoo3.exp_manager, rl_zoo3.hyperparams_opt, rl_zoo3.train
from stable_baselines3 import DQN
from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.zoo import register

register()
register()
for module in (rl_zoo3, rl_zoo3.train, rl_zoo3.exp_manager):
    assert module.ALGOS["parallel_dqn"] is ParallelDQN
assert rl_zoo3.ALGOS["dqn"] is DQN
sampler = rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER
assert sampler["parallel_dqn"] is sampler["dqn"]
print("registered")
"""


@requires_zoo
def test_register_is_idempotent():
    # In a subprocess: importing rl_zoo3 patches gymnasium's TimeLimit for the whole process, which must not leak
    # into the other tests.
    assert "registered" in check_ok(run_python(["-c", REGISTER_TWICE])).stdout


@requires_zoo
def test_single_process_run_folder_and_defaults(single_run):
    path, result = single_run
    assert (path / "CartPole-v1.zip").is_file()
    assert [f.name for f in path.glob("*.monitor.csv")] == ["0.0.monitor.csv"]
    args = read_saved(path)
    assert args["algo"] == "parallel_dqn"
    assert args["conf_file"] == str(DEFAULT_CONF_FILE)
    assert args["seed"] == 0
    assert f"Loading hyperparameters from: {DEFAULT_CONF_FILE}" in result.stdout
    assert read_saved(path, "config.yml")["learning_starts"] == 512


@requires_zoo
def test_config_values_reach_the_model(single_run):
    """The zoo converts the entry itself (eval, schedules); the model must match what our own loader reads."""
    path, _ = single_run
    expected, entry = load_hyperparams("CartPole-v1")
    assert entry == "CartPole-v1"
    model = ParallelDQN.load(path / "CartPole-v1.zip")
    assert model.train_freq.frequency == expected["train_freq"]
    assert model.batch_size == expected["batch_size"]
    assert model.policy.net_arch == expected["policy_kwargs"]["net_arch"]
    assert model.lr_schedule(1.0) == pytest.approx(expected["learning_rate"])
    for key in ("gamma", "target_update_interval", "exploration_fraction", "exploration_final_eps"):
        assert getattr(model, key) == pytest.approx(expected[key]), key
    # The -params overrides win over the entry.
    assert (model.learning_starts, model.gradient_steps, model.buffer_size) == (512, 8, 5000)
    # Rollouts end every 128 steps; the 4 after learning_starts=512 each make 8 gradient steps.
    assert model.num_timesteps == 1024
    assert model._n_updates == 32


@requires_zoo
def test_zip_loads_as_plain_dqn(single_run):
    path, _ = single_run
    model = ParallelDQN.load(path / "CartPole-v1.zip")
    plain = DQN.load(path / "CartPole-v1.zip")
    observations = np.random.default_rng(0).uniform(-0.2, 0.2, size=(16, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        model.predict(observations, deterministic=True)[0], plain.predict(observations, deterministic=True)[0]
    )


@requires_zoo
@pytest.mark.slow
def test_explicit_algo_and_conf_resume(single_run, tmp_path):
    """The issue's command, continuing the first run's model with the zoo's --trained-agent."""
    trained, _ = single_run
    args = [*ZOO, "--algo", "parallel_dqn", "-conf", "zoo_configs/dqn.yml", *FAST, "-n", "256", "--eval-freq", "-1",
            "-f", str(tmp_path), "-i", str(trained / "CartPole-v1.zip")]  # fmt: skip
    result = check_ok(run_python(args, timeout=120))
    assert "Loading pretrained agent" in result.stdout
    path = run_dir(tmp_path)
    assert read_saved(path)["conf_file"] == "zoo_configs/dqn.yml"
    resumed, original = ParallelDQN.load(path / "CartPole-v1.zip"), ParallelDQN.load(trained / "CartPole-v1.zip")
    assert resumed.policy.net_arch == original.policy.net_arch
    assert resumed.num_timesteps == 256


@pytest.mark.slow  # 9 s; the fast tier runs the package's own train script under mpirun (test_scripts.py)
@requires_zoo
def test_mpirun_two_ranks(single_run, tmp_path):
    """One run folder, rank-offset seeds and monitor files, evaluation on rank 0 every --eval-freq global steps."""
    single_path, _ = single_run
    args = [*ZOO, "--algo", "parallel_dqn", "-conf", "zoo_configs/dqn.yml", *FAST, "-n", "1536",
            "--eval-freq", "512", "--eval-episodes", "2", "-f", str(tmp_path)]  # fmt: skip
    result = check_ok(run_mpi(args, timeout=180))
    assert [p.name for p in (tmp_path / "parallel_dqn").iterdir()] == ["CartPole-v1_1"]
    path = run_dir(tmp_path)
    assert result.stdout.count("Log path:") == 1  # only rank 0 prints
    assert read_saved(path)["seed"] == 0

    model = ParallelDQN.load(path / "CartPole-v1.zip")
    # 6 rollouts of 2 ranks x 128 steps; the 4 after learning_starts=512 (global) each make 8 gradient steps.
    assert model.num_timesteps == 1536
    assert model._n_updates == 32
    assert DQN.load(path / "CartPole-v1.zip").batch_size == model.batch_size
    assert (path / "best_model.zip").is_file()
    np.testing.assert_array_equal(np.load(path / "evaluations.npz")["timesteps"], [512, 1024, 1536])

    monitors = sorted(p.name for p in path.glob("*.monitor.csv"))
    assert monitors == ["0.0.monitor.csv", "1.0.monitor.csv"]
    # In the random-action phase, rank 0 replays the single-process run of the same seed; rank 1 (seed + 1) does not.
    rank0 = first_episodes(path / "0.0.monitor.csv", RANDOM_STEPS_PER_RANK_MPI)
    rank1 = first_episodes(path / "1.0.monitor.csv", RANDOM_STEPS_PER_RANK_MPI)
    assert len(rank0) >= 3
    assert rank0 == first_episodes(single_path / "0.0.monitor.csv", RANDOM_STEPS_PER_RANK_MPI)
    assert rank1 != rank0


@requires_zoo
@pytest.mark.slow
def test_mpirun_refuses_other_algos(tmp_path):
    result = run_mpi([*ZOO, "--algo", "dqn", "--env", "CartPole-v1", "-n", "256", "-f", str(tmp_path)], timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error: not supported under mpirun: --algo dqn") == 1  # rank 0 reports it
    assert not any(tmp_path.iterdir())


@requires_zoo
@pytest.mark.slow
def test_mpirun_normalize_keeps_rank_zeros_statistics(tmp_path):
    """As scripts/train.py: each rank normalises with its own statistics, rank 0's are saved, once (atomically)."""
    args = [*ZOO, *FAST, "normalize:True", "-n", "1024", "--eval-freq", "-1", "-f", str(tmp_path)]
    check_ok(run_mpi(args, timeout=180))
    path = run_dir(tmp_path)
    stats = VecNormalize.load(str(path / "CartPole-v1" / "vecnormalize.pkl"), DummyVecEnv([lambda: gym.make("CartPole-v1")]))
    assert 400 < stats.obs_rms.count < 1024  # rank 0's own steps (512, and a reset per episode), not both ranks'
    assert not list(path.rglob(".*tmp*"))
    assert ParallelDQN.load(path / "CartPole-v1.zip").num_timesteps == 1024


def test_missing_rl_zoo3_message():
    """Runs whether or not rl_zoo3 is installed: the import is blocked in the subprocess."""
    code = (
        "import sys; import sb3_parallel_dqn.zoo as zoo\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'rl_zoo3'], 'importing the module imported rl_zoo3'\n"
        "sys.modules['rl_zoo3'] = None\n"
        "sys.exit(zoo.main(['--env', 'CartPole-v1']))\n"
    )
    result = run_python(["-c", code], timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == 'error: rl_zoo3 is not installed: pip install "sb3_parallel_dqn[zoo]"'
