"""
``python -m sb3_parallel_dqn.evaluate`` (``scripts/evaluate.py``): every bad input ends with exit code 2 and one
``error:`` line on stderr, no traceback; and ``--weights-only`` evaluates a model as the ordinary (unpickling) path
does. The command runs in this process (``run_main``); test_unknown_env also runs the script as a real process.
"""

import re

import pytest
import torch as th
from conftest import REPO_DIR, check_ok, run_main, run_python
from test_safe_load import CreatesFile, bad_file, malicious_data_member, rewrite_zip, torch_bytes

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.evaluate import main as evaluate_main
from sb3_parallel_dqn.train import main as train_main

EVALUATE = str(REPO_DIR / "scripts" / "evaluate.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny CartPole run, and a copy of its model whose weights implement a controller (see below)."""
    log_folder = tmp_path_factory.mktemp("logs")
    args = ["--env", "CartPole-v1", "-n", "300", "--seed", "0", "-f", str(log_folder), "--eval-freq", "0",
            "--final-eval-episodes", "0", "--verbose", "0",
            "-params", "learning_starts:100", "policy_kwargs:dict(net_arch=[16])"]  # fmt: skip
    check_ok(run_main(train_main, args))
    run_dir = log_folder / "parallel_dqn" / "CartPole-v1_1"
    model_path = run_dir / "CartPole-v1.zip"

    # 300 steps teach CartPole nothing: the greedy policy pushes one way and every episode lasts 8 to 10 steps,
    # whatever the weights, so equal returns would prove nothing. These weights push towards the side the pole
    # leans to (Q(right) = relu(theta), Q(left) = relu(-theta)), whose episodes last 25 to 50 steps and differ
    # by seed: two loading paths that give the same returns then loaded the same weights.
    model = ParallelDQN.load(model_path)
    with th.no_grad():
        for net in (model.q_net, model.q_net_target):
            hidden, out = net.q_net[0], net.q_net[2]
            for layer in (hidden, out):
                layer.weight.zero_()
                layer.bias.zero_()
            hidden.weight[0, 2], hidden.weight[1, 2] = 1.0, -1.0
            out.weight[1, 0], out.weight[0, 1] = 1.0, 1.0
    controller = run_dir / "controller.zip"  # next to the run's config.yml, which both paths read
    model.save(controller)
    return run_dir, model_path, controller


def evaluate(*args):
    return run_main(evaluate_main, ["--env", "CartPole-v1", "-n", "4", "--seed", "7", *args])


def returns_of(result):
    check_ok(result)
    return [float(r) for r in re.search(r"returns: (.*)", result.stdout).group(1).split()]


def assert_bad_input(result, *fragments):
    """Exit code 2, exactly one line on stderr, starting with ``error:``, holding each fragment; no traceback."""
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for fragment in fragments:
        assert fragment in lines[0], output


def test_weights_only_evaluates_as_the_ordinary_path(run):
    _, _, controller = run
    ordinary = returns_of(evaluate("--model", controller))
    weights_only = evaluate("--model", controller, "--weights-only")
    assert weights_only.stdout.startswith(f"Loaded {controller} (weights only)")
    assert returns_of(weights_only) == ordinary
    assert len(set(ordinary)) > 1 and min(ordinary) > 15  # the controller's returns, not a constant action's


def test_weights_only_never_reads_the_data_member(run, tmp_path):
    run_dir, _, controller = run
    marker = tmp_path / "pwned"
    evil = rewrite_zip(controller, tmp_path / "evil.zip", replace={"data": malicious_data_member(controller, marker)})
    expected = returns_of(evaluate("--model", controller))
    conf = run_dir / "CartPole-v1" / "config.yml"
    assert returns_of(evaluate("--model", evil, "--weights-only", "-conf", conf)) == expected
    assert not marker.exists()


def test_weights_only_refuses_a_pickled_object_without_running_it(run, tmp_path):
    run_dir, model_path, _ = run
    marker = tmp_path / "pwned"
    evil = rewrite_zip(model_path, tmp_path / "evil.zip", replace={"policy.pth": torch_bytes(CreatesFile(marker))})
    result = evaluate("--model", evil, "--weights-only", "-conf", run_dir / "CartPole-v1" / "config.yml")
    assert_bad_input(result, f"{evil}: policy.pth holds pickled objects", "GLOBAL io.open")
    assert not marker.exists()


@pytest.mark.parametrize(
    "kind, mode, message",
    [
        ("text", "ordinary", "not a zip file"),
        ("truncated", "ordinary", "not a zip file, or a truncated"),
        ("truncated", "weights-only", "not a zip file, or a truncated"),
        ("damaged member", "ordinary", "Bad CRC-32 for file 'policy.pth'"),
        ("no policy.pth", "ordinary", "no policy.pth in the zip"),
        ("junk policy.pth", "ordinary", "policy.pth is not a readable PyTorch file"),
        ("junk policy.pth", "weights-only", "policy.pth is not a readable PyTorch file"),
        # read only by the ordinary path (weights-only loads this file, see test_safe_load)
        ("data not JSON", "ordinary", "cannot load the model (JSONDecodeError"),
    ],
)
def test_corrupt_model_file(run, tmp_path, kind, mode, message):
    run_dir, model_path, _ = run
    bad = bad_file(kind, model_path, tmp_path)
    extra = ["--weights-only"] if mode == "weights-only" else []
    result = evaluate("--model", bad, "-conf", run_dir / "CartPole-v1" / "config.yml", *extra)
    assert_bad_input(result, str(bad), message)


def test_missing_model_file(tmp_path):
    assert_bad_input(evaluate("--model", tmp_path / "nothere.zip"), f"model file not found: {tmp_path / 'nothere.zip'}")


def test_model_of_another_env(run):
    _, model_path, _ = run
    result = run_main(evaluate_main, ["--env", "Acrobot-v1", "--model", model_path, "-n", "1"])
    assert_bad_input(result, f"{model_path} does not fit Acrobot-v1: the model's observation space is Box(",
                     "(4,), float32), the env's is Box(", "(6,), float32)")  # fmt: skip
    # weights only: the model is built for Acrobot from its config entry, so the file's tensors do not fit it
    result = run_main(evaluate_main, ["--env", "Acrobot-v1", "--model", model_path, "-n", "1", "--weights-only"])
    assert_bad_input(result, "'q_net.q_net.0.weight' has shape (16, 4) in policy.pth but (64, 6) in the built policy")


def test_unknown_env(run):
    _, model_path, _ = run
    result = run_python([EVALUATE, "--env", "NoSuchEnv-v0", "--model", str(model_path)])
    assert_bad_input(result, "--env NoSuchEnv-v0: Environment `NoSuchEnv` doesn't exist")


def test_weights_only_refuses_a_normalized_config(run, tmp_path):
    _, model_path, _ = run
    conf = tmp_path / "dqn.yml"
    conf.write_text("CartPole-v1:\n  policy_kwargs: 'dict(net_arch=[16])'\n  normalize: true\n")
    result = evaluate("--model", model_path, "-conf", conf, "--weights-only")
    assert_bad_input(result, "--weights-only: CartPole-v1 is normalized", "vecnormalize.pkl) are a pickle")
