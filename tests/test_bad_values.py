"""
Issue 23, item 4, "bad values caught late": every value ``train`` cannot use ends the command with exit code 2 and
one ``error:`` line naming the key, flag or file, before any run folder, env worker or collective; none of them
reaches a traceback in the middle of the run.

The cases run in this process (``run_main``: the same code path as the command, without a new interpreter per
case); test_item4_bad_value_exits_2_in_a_real_process and the mpirun one check what only a real process shows.
"""

import pytest
from conftest import check_ok, run_main, run_mpi, run_python

from sb3_parallel_dqn.train import main as train_main

TRAIN = ["--env", "CartPole-v1", "-n", "300", "--seed", "0", "--eval-freq", "0", "--final-eval-episodes", "0",
         "--verbose", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A tiny run whose final model was saved with its replay buffer, to resume from."""
    log_folder = tmp_path_factory.mktemp("logs")
    args = [*TRAIN, "-f", log_folder, "--save-replay-buffer", "-params", "learning_starts:100",
            "policy_kwargs:dict(net_arch=[16])"]  # fmt: skip
    check_ok(run_main(train_main, args))
    return log_folder / "parallel_dqn" / "CartPole-v1_1"


def truncated_replay_buffer(saved_run, tmp_path):
    """A copy of the saved run whose replay buffer lost its end, as an interrupted copy leaves it."""
    copy = tmp_path / "copied_run"
    copy.mkdir()
    for name in ("CartPole-v1.zip", "replay_buffer.pkl"):
        data = (saved_run / name).read_bytes()
        (copy / name).write_bytes(data[: len(data) // 2] if name.endswith(".pkl") else data)
    return copy / "CartPole-v1.zip"


# (name, extra command-line arguments, fragments of the error line)
CASES = [
    ("policy_kwargs unknown", ["-params", "policy_kwargs:dict(foo=1)"], ["key 'policy_kwargs'", "'foo'"]),
    ("net_arch a string", ["-params", "policy_kwargs:dict(net_arch='64')"], ["key 'policy_kwargs'"]),
    ("alpha without PER", ["-params", "replay_buffer_kwargs:dict(alpha=0.5)"], ["key 'replay_buffer_kwargs'", "alpha"]),
    ("PER alpha < 0", ["-params", "replay_buffer_class:PrioritizedReplayBuffer", "replay_buffer_kwargs:dict(alpha=-1)"],
     ["key 'replay_buffer_kwargs'", "alpha must be >= 0"]),
    ("env_kwargs unknown", ["-params", "env_kwargs:dict(foo=1)"], ["key 'env_kwargs'", "'foo'"]),
    ("no such policy", ["-params", "policy:NoSuchPolicy"], ["key 'policy'", "NoSuchPolicy unknown"]),
    ("CnnPolicy on CartPole", ["-params", "policy:CnnPolicy"], ["key 'policy'", "NatureCNN only with images"]),
    ("FrameReplayBuffer on CartPole", ["-params", "replay_buffer_class:FrameReplayBuffer"],
     ["key 'replay_buffer_class'", "image observations"]),
    ("n_steps with optimize_memory_usage", ["-params", "n_steps:5", "optimize_memory_usage:True"],
     ["key 'optimize_memory_usage'"]),
    ("--torch-threads 0", ["--torch-threads", "0"], ["--torch-threads: must be >= 1"]),
    ("--log-interval 0", ["--log-interval", "0"], ["--log-interval: must be >= 1"]),
    ("unwritable -tb", ["-tb", "{blocker}/tb"], ["tensorboard log folder (-tb) {blocker}/tb"]),
    ("truncated replay shard", ["-i", "{truncated}"], ["{truncated_buffer}: truncated"]),
]  # fmt: skip


@pytest.mark.parametrize("name, extra, fragments", CASES, ids=[case[0] for case in CASES])
def test_item4_bad_value_exits_2_with_one_line_before_any_run_folder(saved_run, tmp_path, name, extra, fragments):
    """Issue 23 item 4 (bad values caught late): exit 2, one line naming the key/flag/file, no run folder made."""
    blocker = tmp_path / "a_file"  # a folder cannot be made under a file (and root can write anywhere else)
    blocker.write_text("")
    truncated = truncated_replay_buffer(saved_run, tmp_path) if name == "truncated replay shard" else None
    names = {"blocker": blocker, "truncated": truncated, "truncated_buffer": truncated and truncated.with_name(
        "replay_buffer.pkl")}  # fmt: skip
    log_folder = tmp_path / "logs"
    result = run_main(train_main, [*TRAIN, "-f", log_folder, *(arg.format(**names) for arg in extra)])
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for fragment in fragments:
        assert fragment.format(**names) in lines[0], output
    assert not list(log_folder.glob("parallel_dqn/CartPole-v1_*")), "a run folder was made before the check"


def test_item4_bad_value_exits_2_in_a_real_process(tmp_path):
    """Issue 23 item 4: the real command's exit status and stderr: one line, no traceback."""
    result = run_python(["-m", "sb3_parallel_dqn.train", *TRAIN, "-f", str(tmp_path), "-params", "policy_kwargs:dict(foo=1)"])
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert "key 'policy_kwargs'" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("parallel_dqn/CartPole-v1_*"))


@pytest.mark.slow
def test_item4_bad_value_under_mpirun_is_one_line_for_the_job(tmp_path):
    """Issue 23 item 4: under mpirun every rank stops before any collective, and the job says it once."""
    result = run_mpi(["-m", "sb3_parallel_dqn.train", *TRAIN, "-f", str(tmp_path), "-params", "policy:NoSuchPolicy"],
                     timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "key 'policy'" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("parallel_dqn/CartPole-v1_*"))
