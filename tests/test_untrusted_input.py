"""
Issue 23, item 4 "untrusted input": a weights-only evaluation runs no code that came with the model (a config next
to it that names modules, a module in its folder or in the working directory), and what an untrusted file can cost
is bounded (YAML aliases, the size of ``policy.pth``). Item 3: a zip of another algorithm is refused with one line,
and a run trained split over ranks evaluates weights-only in one process.

The payloads are live: each test that shows a module is not run also shows that importing it does write its marker.
"""

import shutil
import sys
import time
import zipfile
from pathlib import Path

import pytest
import stable_baselines3 as sb3
from conftest import check_ok, run_main, run_mpi, run_python

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.evaluate import main as evaluate_main
from sb3_parallel_dqn.io import safe_load
from sb3_parallel_dqn.io.safe_load import ModelFileError, read_policy_state_dict
from sb3_parallel_dqn.train import main as train_main
from sb3_parallel_dqn.validation import ConfigError
from sb3_parallel_dqn.zoo.hyperparams import class_entries, load_hyperparams

TRAIN = ["--env", "CartPole-v1", "-n", "300", "--seed", "0", "--eval-freq", "0", "--final-eval-episodes", "0",
         "--verbose", "0", "-params", "learning_starts:100", "policy_kwargs:dict(net_arch=[16])"]  # fmt: skip

HELPER = """
import pathlib
pathlib.Path({marker!r}).write_text("this module ran")
import gymnasium as gym


class Wrapper(gym.Wrapper):
    pass
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny one-process CartPole run: its folder and its final model."""
    log_folder = tmp_path_factory.mktemp("logs")
    check_ok(run_main(train_main, [*TRAIN, "-f", log_folder]))
    run_dir = log_folder / "parallel_dqn" / "CartPole-v1_1"
    return log_folder, run_dir, run_dir / "CartPole-v1.zip"


def downloaded_folder(folder, model_path, module):
    """The issue's download: ``downloaded.zip``, ``CartPole-v1/config.yml`` naming ``<module>.Wrapper`` and the module,
    which writes a marker when imported."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, folder / "downloaded.zip")
    (folder / "CartPole-v1").mkdir()
    (folder / "CartPole-v1" / "config.yml").write_text(
        f"CartPole-v1:\n  policy_kwargs: 'dict(net_arch=[16])'\n  env_wrapper: {module}.Wrapper\n"
    )
    marker = folder / "MARKER"
    (folder / f"{module}.py").write_text(HELPER.format(marker=str(marker)))
    return marker


def one_error_line(result, *fragments):
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for fragment in fragments:
        assert fragment in lines[0], output
    return lines[0]


def test_item4_weights_only_runs_no_code_from_the_model_folder(run, tmp_path):
    """Issue 23 item 4: the issue's command, run from the downloaded folder, refuses the config next to the model."""
    folder = tmp_path / "download"
    marker = downloaded_folder(folder, run[2], "helpers")
    command = ["-m", "sb3_parallel_dqn.evaluate", "--env", "CartPole-v1", "--model", "downloaded.zip", "--weights-only"]
    result = run_python([*command, "-n", "1"], cwd=folder)
    one_error_line(result, "CartPole-v1/config.yml, found next to the model, names code to import",
                   "env_wrapper: helpers.Wrapper")  # fmt: skip
    assert not marker.exists(), "the model folder's helpers.py ran"
    check_ok(run_python(["-c", "import helpers"], cwd=folder))  # the payload is live: imported, it writes the marker
    assert marker.exists()


@pytest.mark.parametrize("where", ["working directory", "model folder on sys.path"])
def test_item4_weights_only_imports_no_module_from_the_model_folder_or_the_cwd(run, tmp_path, monkeypatch, where):
    """Issue 23 item 4: even with the config passed explicitly, the module next to the model (or in the working
    directory, first on sys.path under ``python -m``) is refused before it is imported."""
    module = f"helpers_{where.split()[0]}"
    folder = tmp_path / "download"
    marker = downloaded_folder(folder, run[2], module)
    if where == "working directory":
        monkeypatch.chdir(folder)  # as `python -m` does: the working directory first on sys.path
    else:
        monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(folder))
    args = ["--env", "CartPole-v1", "--model", folder / "downloaded.zip", "--weights-only", "-n", "1",
            "-conf", folder / "CartPole-v1" / "config.yml"]  # fmt: skip
    one_error_line(run_main(evaluate_main, args), f"'{module}.Wrapper' would be imported from {folder}",
                   "imports nothing from the model's folder or the working directory")  # fmt: skip
    assert not marker.exists() and module not in sys.modules
    # Without --weights-only the user trusts the files, and the wrapper is used: the payload is live.
    check_ok(run_main(evaluate_main, [arg for arg in args if arg != "--weights-only"]))
    assert marker.exists()
    sys.modules.pop(module, None)


def test_item4_weights_only_still_uses_installed_wrappers(run, tmp_path, monkeypatch):
    """Issue 23 item 4: a config passed with -conf may name installed classes, even with the venv under the cwd."""
    monkeypatch.chdir(Path(sys.prefix).parent)  # the venv's site-packages lie under the working directory
    conf = tmp_path / "dqn.yml"
    conf.write_text("CartPole-v1:\n  policy_kwargs: 'dict(net_arch=[16])'\n"
                    "  env_wrapper: [{gymnasium.wrappers.TimeLimit: {max_episode_steps: 500}}]\n")  # fmt: skip
    result = check_ok(run_main(evaluate_main, ["--model", run[2], "--weights-only", "-n", "2", "-conf", conf]))
    assert "(weights only)" in result.stdout


def billion_laughs(levels=9):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    wrapper = "gymnasium.wrappers.TimeLimit"
    return "\n".join([*lines, f"CartPole-v1:\n  env_wrapper: [{{{wrapper}: {{max_episode_steps: *a{levels - 1}}}}}]\n"])


def test_item4_yaml_alias_bomb_is_refused_fast(tmp_path):
    """Issue 23 item 4: a file of a few hundred bytes expanding to 9**9 values is refused at once with a clear error."""
    conf = tmp_path / "laughs.yml"
    conf.write_text(billion_laughs())
    assert conf.stat().st_size < 1000
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"more than 100000 values once its aliases are expanded.*MAX_YAML_NODES"):
        load_hyperparams("CartPole-v1", conf)
    assert time.perf_counter() - start < 2
    recursive = tmp_path / "recursive.yml"
    recursive.write_text("loop: &loop [*loop]\nCartPole-v1: {n_timesteps: 100}\n")
    with pytest.raises(ConfigError, match="alias refers to a node that contains it"):
        load_hyperparams("CartPole-v1", recursive)
    deep = tmp_path / "deep.yml"
    deep.write_text("CartPole-v1: {env_kwargs: " + "[" * 20_000 + "]" * 20_000 + "}\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_hyperparams("CartPole-v1", deep)


def test_item4_yaml_aliases_within_the_budget_still_load(tmp_path):
    """Issue 23 item 4: anchors and merge keys of an ordinary config keep working."""
    conf = tmp_path / "anchors.yml"
    conf.write_text("base: &base {n_timesteps: 100, batch_size: 16}\nCartPole-v1:\n  <<: *base\n  gamma: 0.9\n")
    hyperparams, _ = load_hyperparams("CartPole-v1", conf)
    assert (hyperparams["n_timesteps"], hyperparams["batch_size"], hyperparams["gamma"]) == (100, 16, 0.9)


def test_item4_plain_value_check_walks_shared_values_once():
    """Issue 23 item 4: ``_check_plain`` memoizes: a value sharing its parts 2**60 ways is checked at once."""
    shared: list = ["x"]
    for _ in range(60):
        shared = [shared, shared]
    start = time.perf_counter()
    assert class_entries({"gymnasium.wrappers.TimeLimit": {"max_episode_steps": shared}}, "env_wrapper")
    assert time.perf_counter() - start < 1


def test_item4_policy_member_size_is_bounded(run, tmp_path, monkeypatch):
    """Issue 23 item 4: a ``policy.pth`` over ``safe_load.MAX_POLICY_BYTES`` is refused before it is decompressed."""
    assert safe_load.MAX_POLICY_BYTES == 1 << 30
    model_path = run[2]
    assert read_policy_state_dict(model_path)  # a real model is far below the default
    bomb = tmp_path / "bomb.zip"  # 64 MiB of zeros in a zip of some 64 KiB
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data", "{}")
        archive.writestr("policy.pth", bytes(64 << 20))
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr(safe_load, "MAX_POLICY_BYTES", 1 << 20)
    with pytest.raises(ModelFileError, match=r"policy.pth is 67108864 bytes once decompressed, over the limit of 1048576"):
        read_policy_state_dict(bomb)
    # the command line reports it as a bad input (a full load trusts the file, and does not bound it)
    one_error_line(run_main(evaluate_main, ["--model", bomb, "-n", "1", "--weights-only"]), "over the limit of 1048576")
    monkeypatch.setattr(safe_load, "MAX_POLICY_BYTES", 100)  # read at each call: a limit below a real model's
    with pytest.raises(ModelFileError, match=r"over the limit of 100 \(sb3_parallel_dqn.io.safe_load.MAX_POLICY_BYTES"):
        read_policy_state_dict(model_path)


@pytest.fixture(scope="module")
def ppo_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("foreign") / "ppo.zip"
    sb3.PPO("MlpPolicy", "CartPole-v1").save(path)
    return path


def test_item3_foreign_zip_is_refused_with_one_line_and_no_run_folder(ppo_zip, tmp_path):
    """Issue 23 item 3: a stock PPO zip to ``train -i`` or ``evaluate --model``: exit 2, one line, nothing created."""
    log_folder = tmp_path / "logs"
    result = run_main(train_main, [*TRAIN, "-f", log_folder, "-i", ppo_zip])
    one_error_line(result, f"--trained-agent: {ppo_zip}: not a DQN model", "action_net, mlp_extractor, value_net")
    assert not log_folder.exists()
    for extra in ([], ["--weights-only"]):
        result = run_main(evaluate_main, ["--model", ppo_zip, "-n", "1", *extra])
        one_error_line(result, f"{ppo_zip}: not a DQN model")


def test_item3_weights_only_evaluates_a_model_parallel_run_in_one_process(run, tmp_path):
    """Issue 23 item 3: a run whose config says model_parallel_size 2 (and shard_optimizer) evaluates weights-only in
    one process, whole, with the returns of the full load."""
    log_folder = tmp_path / "logs"
    run_dir = log_folder / "parallel_dqn" / "CartPole-v1_1"
    shutil.copytree(run[1], run_dir)
    config = run_dir / "CartPole-v1" / "config.yml"
    config.write_text(config.read_text() + "  model_parallel_size: 2\n  shard_optimizer: true\n")
    args = ["--env", "CartPole-v1", "-f", log_folder, "-n", "3", "--seed", "5"]
    weights_only = check_ok(run_main(evaluate_main, [*args, "--weights-only"]))
    full = check_ok(run_main(evaluate_main, args))
    returns = [line for line in weights_only.stdout.splitlines() if line.startswith("returns:")]
    assert returns == [line for line in full.stdout.splitlines() if line.startswith("returns:")]


@pytest.mark.slow
def test_item3_weights_only_evaluates_a_run_trained_with_model_parallel_size_2(tmp_path):
    """Issue 23 item 3: the issue's case, a real ``--model-parallel-size 2`` run under mpirun."""
    check_ok(run_mpi(["-m", "sb3_parallel_dqn.train", *TRAIN, "-f", str(tmp_path), "--model-parallel-size", "2"]))
    result = check_ok(run_python(["-m", "sb3_parallel_dqn.evaluate", "--env", "CartPole-v1", "-f", str(tmp_path),
                                  "--weights-only", "-n", "2"]))  # fmt: skip
    assert "(weights only)" in result.stdout


@pytest.mark.slow
def test_item3_foreign_zip_under_mpirun_is_one_line_for_the_job(ppo_zip, tmp_path):
    """Issue 23 item 3: under mpirun, every rank refuses the PPO zip before any collective; the job says it once."""
    result = run_mpi(["-m", "sb3_parallel_dqn.train", *TRAIN, "-f", str(tmp_path), "-i", str(ppo_zip)], timeout=120)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not a DQN model" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "parallel_dqn").exists()


def test_item4_parallel_dqn_zip_still_loads(run):
    """The DQN check accepts this package's models (and SB3's DQN, which saves the same q_net/q_net_target)."""
    state = read_policy_state_dict(run[2])
    safe_load.check_dqn_state_dict(state, str(run[2]))
    model = ParallelDQN.load(run[2])
    sb3_path = run[2].with_name("sb3_dqn.zip")
    sb3.DQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [16]}).save(sb3_path)
    safe_load.check_dqn_state_dict(read_policy_state_dict(sb3_path), str(sb3_path))
    assert model.policy is not None
