"""
The command lines live in the package: ``python -m sb3_parallel_dqn.<command>``, the ``sb3-parallel-dqn`` console
script, and the thin ``scripts/`` wrappers all run the same ``main``; an installed wheel (no checkout) carries them
and the shipped config.
"""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_DIR, check_ok, run_main, run_python

from sb3_parallel_dqn import cli

COMMANDS = ["train", "evaluate", "plot", "benchmark", "zoo"]


@pytest.mark.parametrize("command", COMMANDS[:4])
def test_every_command_has_its_help(command):
    result = run_main(cli.main, [command, "--help"])
    assert result.returncode == 0 and "usage:" in result.stdout and "--" in result.stdout, result.stdout + result.stderr


def test_unknown_command_lists_the_commands():
    result = run_main(cli.main, ["trian"])
    assert result.returncode == 2 and "unknown command 'trian'" in result.stderr
    assert all(command in result.stderr for command in COMMANDS)
    assert run_main(cli.main, ["--help"]).returncode == 0


def test_scripts_are_thin_wrappers_over_the_package():
    for name in ("train", "evaluate", "plot", "benchmark"):
        source = (REPO_DIR / "scripts" / f"{name}.py").read_text()
        assert f"from sb3_parallel_dqn.{name} import main" in source and len(source.splitlines()) <= 10, name


def test_console_script_and_module_entry_points(tmp_path):
    script = shutil.which("sb3-parallel-dqn", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is not installed: pip install -e ."
    result = subprocess.run([script, "plot", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "--smooth" in result.stdout, result.stderr
    result = check_ok(run_python(["-m", "sb3_parallel_dqn", "evaluate", "--help"], cwd=tmp_path, timeout=60))
    assert "--weights-only" in result.stdout


@pytest.mark.slow
def test_a_wheel_runs_the_commands_without_the_checkout(tmp_path):
    """pip install of a built wheel (not editable): the command lines and the shipped dqn.yml come with it."""
    check_ok(run_python(["-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                         str(REPO_DIR)], timeout=300))  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("sb3_parallel_dqn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sb3_parallel_dqn/zoo/configs/dqn.yml" in names and "sb3_parallel_dqn/train.py" in names
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "sb3-parallel-dqn = sb3_parallel_dqn.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    target = tmp_path / "site"
    check_ok(run_python(["-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], timeout=300))
    # From a folder without the checkout, with the installed copy first on the path (its dependencies are this venv's).
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    args = ["-m", "sb3_parallel_dqn.train", "--env", "CartPole-v1", "-n", "300", "-f", "logs", "--eval-freq", "0",
            "--final-eval-episodes", "2", "-params", "learning_starts:100"]  # fmt: skip
    result = check_ok(run_python(args, cwd=workdir, env={"PYTHONPATH": str(target)}, timeout=300))
    assert f"of {target}" in result.stdout and "zoo/configs/dqn.yml" in result.stdout  # the wheel's own config
    assert (workdir / "logs" / "parallel_dqn" / "CartPole-v1_1" / "CartPole-v1.zip").is_file()
