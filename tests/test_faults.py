"""
Fault injection with real processes: an exception or SIGKILL on one rank, SIGTERM/SIGINT to the job, NaN
gradients, bad input. Every job must end (non-zero, within 30 s of the fault) instead of hanging, and leave the last
checkpoint intact.
"""

import os
import re
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch as th
from conftest import MPI_SCRIPTS, REPO_DIR, assert_holds, check_ok, mpirun_path, reports_present, run_main, run_mpi, run_python

from sb3_parallel_dqn import ParallelDQN, UnsupportedSpaceError, stop_on_signals
from sb3_parallel_dqn.io.checkpoints import list_checkpoints
from sb3_parallel_dqn.train import main as train_main
from sb3_parallel_dqn.zoo.hyperparams import ConfigError

TRAIN = str(REPO_DIR / "scripts" / "train.py")
EXIT_LIMIT_S = 30


def ended_by_the_fault(result, ended: float, out_dir) -> dict[str, bool]:
    """
    What every fault_one_rank.py job must show: it failed, within EXIT_LIMIT_S of the time rank 1 reported injecting
    its fault, and no rank's training ended without the fault.
    """
    fault = reports_present(out_dir, "fault").get(1)
    return {
        "the job failed": result.returncode != 0,
        "rank 1 reported its fault": fault is not None,
        f"it ended within {EXIT_LIMIT_S} s of the fault": fault is not None and ended - fault["time"] < EXIT_LIMIT_S,
        "no rank's training ended without the fault": not reports_present(out_dir, "finished"),
    }


def last_checkpoint_loads(folder) -> dict[str, bool]:
    checkpoints = list_checkpoints(folder)
    model = ParallelDQN.load(checkpoints[max(checkpoints)]) if checkpoints else None
    return {
        "at least 3 checkpoints": len(checkpoints) >= 3,
        "the last checkpoint loads, at its step count": model is not None and model.num_timesteps == max(checkpoints),
        "its weights are finite": model is not None and all(th.isfinite(p).all() for p in model.policy.parameters()),
        "no half-written file left behind": not [p.name for p in folder.iterdir() if ".tmp" in p.name],
    }


def job_details(result, folder) -> str:
    files = sorted(p.name for p in folder.iterdir())
    return f"exit code {result.returncode}; files {files}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.mark.parametrize(
    "fault, message",
    [pytest.param("env_step", "injected failure in env.step on rank 1", marks=pytest.mark.slow),
     pytest.param("train", "injected failure in train on rank 1", marks=pytest.mark.slow),  # 11 s
     pytest.param("callback", "injected failure in a callback on rank 1", marks=pytest.mark.slow)],
)  # fmt: skip
def test_exception_on_one_rank_ends_the_job(tmp_path, fault, message):
    result = run_mpi([str(MPI_SCRIPTS / "fault_one_rank.py"), fault, str(tmp_path)], timeout=120)
    ended = time.time()
    properties = ended_by_the_fault(result, ended, tmp_path) | last_checkpoint_loads(tmp_path)
    # the failing rank's traceback, once; rank 0 was waiting in a collective and got no traceback of its own
    properties["the fault's message once on stderr"] = result.stderr.count(f"RuntimeError: {message}") == 1
    properties["one traceback on stderr"] = result.stderr.count("Traceback (most recent call last)") == 1
    assert_holds(properties, job_details(result, tmp_path))


@pytest.mark.slow
def test_sigkill_of_one_rank_ends_the_job_and_keeps_the_checkpoints(tmp_path):
    result = run_mpi([str(MPI_SCRIPTS / "fault_one_rank.py"), "sigkill", str(tmp_path)], timeout=120)
    ended = time.time()
    properties = ended_by_the_fault(result, ended, tmp_path) | last_checkpoint_loads(tmp_path)
    assert_holds(properties, job_details(result, tmp_path))


@pytest.mark.slow
def test_nan_gradients_stop_training_and_name_the_update(tmp_path):
    result = run_mpi([str(MPI_SCRIPTS / "fault_one_rank.py"), "nan", str(tmp_path)], timeout=120)
    match = re.search(r"NonFiniteError: non-finite loss or gradients at gradient update (\d+) \(global step (\d+)\)",
                      result.stderr)  # fmt: skip
    # the checkpoints written before hold finite weights, from before the NaN
    properties = {"the job failed": result.returncode != 0} | last_checkpoint_loads(tmp_path)
    properties |= {
        "stderr names the update and its global step": match is not None,
        "stderr says the weights were not updated": "the weights were not updated" in result.stderr,
        "the last checkpoint is from before the NaN": match is not None
        and max(list_checkpoints(tmp_path), default=0) <= int(match.group(2)),
    }
    assert_holds(properties, job_details(result, tmp_path))


def test_nan_detected_with_one_process():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", learning_starts=50, train_freq=8, policy_kwargs={"net_arch": [8]})
    model.learn(100)
    model.replay_buffer.rewards[: model.replay_buffer.pos] = np.nan
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(FloatingPointError, match="non-finite loss or gradients at gradient update"):
        model.train(gradient_steps=1, batch_size=8)
    assert all(th.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))


def start_training(tmp_path, n_timesteps=200_000, extra=()):
    command = [mpirun_path(), "-np", "2", sys.executable, TRAIN, "--env", "CartPole-v1", "-n", str(n_timesteps),
               "--seed", "0", "-f", str(tmp_path), "--eval-freq", "0", "--verbose", "0", "--save-replay-buffer",
               "-params", "policy_kwargs:dict(net_arch=[32])", "learning_starts:500", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=REPO_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def wait_for_monitor_rows(run_dir, rows=20, timeout=60):
    """Until both ranks have finished some episodes: training is under way."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = list(run_dir.glob("*.monitor.csv"))
        if len(files) == 2 and all(len(f.read_text().splitlines()) > rows for f in files):
            return
        time.sleep(0.2)
    pytest.fail(f"training did not start in {timeout} s")


@pytest.mark.slow  # 16 s: the fast tier has a signal ending a real run in test_checkpoints (item 5) and test_hangs
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_job_saves_a_checkpoint_that_resumes(tmp_path, sig):
    process = start_training(tmp_path)
    run_dir = tmp_path / "parallel_dqn" / "CartPole-v1_1"
    try:
        wait_for_monitor_rows(run_dir)
        sent = time.time()
        process.send_signal(sig)  # to mpirun, which forwards it to the ranks
        stdout, stderr = process.communicate(timeout=EXIT_LIMIT_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert time.time() - sent < EXIT_LIMIT_S
    # the exit status says how it ended: 128 + the signal, as a process killed by it would report
    assert process.returncode == 128 + sig.value, stdout + stderr
    match = re.search(rf"Interrupted by {sig.name} at (\d+) global steps: saved (\S+) with the replay buffers", stdout)
    assert match, stdout + stderr
    step, checkpoint = int(match.group(1)), match.group(2)
    assert step % 256 == 0  # a rollout boundary (128 steps x 2 ranks), after its gradient steps
    assert [p.name for p in run_dir.glob(f"*_{step}_steps*")] and len(list(run_dir.glob("*.rank*.pkl"))) == 2
    assert "Traceback" not in stderr
    saved = ParallelDQN.load(checkpoint)
    assert saved.num_timesteps == step and saved._total_timesteps == 200_000

    # -i goes on from there (here for a few more steps only) with the replay buffers
    resumed = check_ok(run_mpi([TRAIN, "--env", "CartPole-v1", "-i", checkpoint, "-n", "512", "-f", str(tmp_path / "more"),
                                "--eval-freq", "0", "--final-eval-episodes", "0", "--verbose", "0"], timeout=120))  # fmt: skip
    assert f"Resuming from {checkpoint} at {step} global steps, for 512 more" in resumed.stdout
    final = ParallelDQN.load(tmp_path / "more" / "parallel_dqn" / "CartPole-v1_1" / "CartPole-v1.zip")
    assert final.num_timesteps == step + 512


def test_unwritable_log_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be")
    result = run_main(train_main, ["--env", "CartPole-v1", "-f", blocker / "logs"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "cannot write to the log folder" in result.stderr and "Traceback" not in result.stderr


def test_continuous_action_space_is_refused():
    with pytest.raises(UnsupportedSpaceError, match="Discrete"):
        ParallelDQN("MlpPolicy", "Pendulum-v1")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    model = ParallelDQN("MlpPolicy", "CartPole-v1", learning_starts=50, policy_kwargs={"net_arch": [8]})
    model.learn(100)
    model.save(folder / "model.zip")
    data = (folder / "model.zip").read_bytes()
    (folder / "truncated.zip").write_bytes(data[: len(data) // 2])
    (folder / "not_a_zip.zip").write_text("hello")
    with zipfile.ZipFile(folder / "foreign.zip", "w") as archive:
        archive.writestr("readme.txt", "not a model")
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "Pendulum-v1"], "use an env with a Discrete action space"),
        (["-params", "exploration_final_eps:1.5"], "exploration_final_eps"),
        (["-params", "buffer_size:-5"], "buffer_size"),
        (["-params", "batch_size:0"], "batch_size"),
        (["-params", "gamma:yes"], "gamma"),
        (["-params", "learning_rat:0.1"], "did you mean 'learning_rate'"),
        (["-i", "{saved}/missing.zip"], "no such model file"),
        (["-i", "{saved}/truncated.zip"], "not a readable model zip"),
        (["-i", "{saved}/not_a_zip.zip"], "not a readable model zip"),
        (["-i", "{saved}/foreign.zip"], "not a saved SB3/ParallelDQN model"),
        (["-i", "{saved}/model.zip", "--env", "Acrobot-v1"], "does not fit Acrobot-v1"),
    ],
)
def test_bad_input_exits_with_code_2(tmp_path, saved_model, args, message):
    args = [arg.format(saved=saved_model) for arg in args]
    result = run_main(train_main, ["--env", "CartPole-v1", "-f", tmp_path, "--final-eval-episodes", "0", *args])
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_input_in_a_real_process_exits_with_code_2_and_no_traceback(tmp_path):
    result = run_python([TRAIN, "--env", "Pendulum-v1", "-f", str(tmp_path)])
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_input_under_mpirun_is_reported_once(tmp_path):
    result = run_mpi([TRAIN, "--env", "CartPole-v1", "-f", str(tmp_path), "-params", "train_freq:[1, 'episode']"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("counts episodes, which ranks finish at different times") == 1, result.stderr
    assert not (tmp_path / "parallel_dqn").exists() or not list((tmp_path / "parallel_dqn").iterdir())


@pytest.mark.parametrize(
    "kwargs, key",
    [({"batch_size": 0}, "batch_size"), ({"buffer_size": -5}, "buffer_size"), ({"exploration_final_eps": 1.5},
     "exploration_final_eps"), ({"gamma": "0.99"}, "gamma"), ({"train_freq": (4, "epoch")}, "train_freq"),
     ({"learning_rate": -1.0}, "learning_rate"), ({"gradient_steps": -2}, "gradient_steps"), ({"n_envs": 0}, "n_envs")],
)  # fmt: skip
def test_python_api_refuses_bad_values(kwargs, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        ParallelDQN("MlpPolicy", "CartPole-v1", **kwargs)


def test_a_signal_stops_only_the_learn_it_reached():
    """
    Regression (issue 12, item 3): a stop request used to outlive its stop_on_signals() block, so every later
    learn() stopped after one rollout, silently. Now the learn() it stopped consumes it, and the block forgets it.
    """
    kwargs = {"learning_starts": 50, "buffer_size": 1_000, "policy_kwargs": {"net_arch": [16]}, "train_freq": 16}
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **kwargs)
    with stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)  # recorded by the handler, not fatal
        model.learn(400)
        assert model.stopped_by_signal == signal.SIGTERM and model.num_timesteps == 16  # one rollout
        model.learn(400)  # same block, no new signal: the whole budget
        assert model.stopped_by_signal is None and model.num_timesteps == 400
        os.kill(os.getpid(), signal.SIGTERM)  # arrives after the last rollout: nobody acts on it in the block
    model.learn(400)  # outside the block: SB3's behaviour, the whole budget
    assert model.stopped_by_signal is None and model.num_timesteps == 400
