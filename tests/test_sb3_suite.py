"""
SB3's own DQN tests, with ``ParallelDQN`` in ``DQN``'s place (issue 23, item 1; the slow tier).

The tests are SB3's, at the installed SB3 version: the PyPI sdist of ``stable-baselines3==<installed>`` holds its
``tests/`` folder, fetched at test time with pip (PyPI only), so that a new SB3 release runs its own tests and shows
what broke. Offline, point ``SB3_SDIST`` at that sdist (the ``.tar.gz``) or at a folder holding its ``tests/``.
They run in a child pytest under SB3's own pytest settings, with a plugin that puts ``ParallelDQN`` in
``stable_baselines3.DQN`` before the test modules import it (and in the name ``DQN`` of each collected module).
Stock SB3 2.9.2: 61 passed, 6 skipped (CUDA-only, and cases SB3 itself skips); ParallelDQN the same since this
issue (it refused ``tau=0``, ``gradient_steps=0``, and raised a ``ValueError`` where SB3 asserts).
"""

import os
import sys
import tarfile
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import run_command

# The files of SB3's tests/ with DQN cases (those present at the installed version run).
SB3_TEST_FILES = [
    "test_run.py", "test_save_load.py", "test_callbacks.py", "test_predict.py", "test_spaces.py",
    "test_train_eval_mode.py", "test_n_step_replay.py", "test_dict_env.py", "test_cnn.py", "test_custom_policy.py",
    "test_her.py", "test_identity.py", "test_deterministic.py", "test_logger.py", "test_utils.py",
]  # fmt: skip
SELECT = "DQN or dqn"

PLUGIN = '''
"""Put sb3_parallel_dqn.ParallelDQN in stable_baselines3.DQN's place (loaded with -p before any test module)."""
import stable_baselines3
import stable_baselines3.dqn

from sb3_parallel_dqn import ParallelDQN

stable_baselines3.DQN = ParallelDQN
stable_baselines3.dqn.DQN = ParallelDQN


def pytest_collection_modifyitems(session, config, items):
    modules = {item.module for item in items if getattr(item, "module", None) is not None}
    for module in modules:
        if getattr(module, "DQN", ParallelDQN) is not ParallelDQN:
            raise RuntimeError(f"{module.__name__} holds SB3's DQN, not ParallelDQN")
        if hasattr(module, "DQN"):
            module.DQN = ParallelDQN
'''


def _extract_tests(sdist: Path, into: Path) -> Path:
    """SB3's tests/, LICENSE and pyproject.toml out of its sdist (not its package: the installed one runs)."""
    with tarfile.open(sdist) as archive:
        wanted = []
        for member in archive.getmembers():
            parts = Path(member.name).parts
            if len(parts) >= 2 and (parts[1] == "tests" or (len(parts) == 2 and parts[1] in ("LICENSE", "pyproject.toml"))):
                if member.isfile() or member.isdir():
                    wanted.append(member)
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(into, members=wanted, **kwargs)
    (root,) = {Path(member.name).parts[0] for member in wanted}
    return into / root


@pytest.fixture(scope="module")
def sb3_tests(tmp_path_factory) -> Path:
    """A folder holding SB3's tests/ (and its pyproject.toml) at the installed version."""
    sb3_version = version("stable-baselines3")
    work = tmp_path_factory.mktemp("sb3_suite")
    given = os.environ.get("SB3_SDIST")
    if given:
        path = Path(given)
        if path.is_dir():
            assert (path / "tests").is_dir(), f"SB3_SDIST={given}: no tests/ folder in it"
            return path
        return _extract_tests(path, work)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += [f"stable-baselines3=={sb3_version}", "-d", str(work / "sdist"), "--quiet", "--disable-pip-version-check"]
    result = run_command(command, timeout=300)
    if result.returncode != 0:
        pytest.fail(
            f"cannot fetch SB3 {sb3_version}'s sdist from PyPI ({' '.join(command)}): {result.stderr[-2000:]}\n"
            "offline, set SB3_SDIST to the sdist (stable_baselines3-<version>.tar.gz) or a folder with its tests/"
        )
    (sdist,) = (work / "sdist").glob("*.tar.gz")
    return _extract_tests(sdist, work)


@pytest.mark.slow
def test_item1_sb3s_own_dqn_tests_pass_with_parallel_dqn(sb3_tests, tmp_path):
    files = [sb3_tests / "tests" / name for name in SB3_TEST_FILES if (sb3_tests / "tests" / name).exists()]
    assert len(files) >= 10, f"SB3's tests/ lacks most of {SB3_TEST_FILES}"
    (tmp_path / "sb3_parallel_dqn_in_dqns_place.py").write_text(PLUGIN)
    report = tmp_path / "report.xml"
    config = sb3_tests / "pyproject.toml"
    command = [sys.executable, "-m", "pytest", *map(str, files), "-k", SELECT, "-p", "no:cacheprovider"]
    command += ["-p", "sb3_parallel_dqn_in_dqns_place", "-q", "-rfEs", "--junitxml", str(report), "--timeout", "300"]
    command += ["--rootdir", str(sb3_tests), "-c", str(config) if config.exists() else os.devnull]
    # The working directory is a scratch folder: SB3's tests may write next to it; the plugin comes first on the path.
    path = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = run_command(command, timeout=600, cwd=tmp_path, env={"PYTHONPATH": path})
    output = f"{' '.join(command)}\nstdout:\n{result.stdout[-8000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert report.exists(), output

    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        child = next((tag.tag for tag in case if tag.tag in ("failure", "error", "skipped")), "passed")
        outcomes[name] = child
    counts = {
        outcome: sum(value == outcome for value in outcomes.values()) for outcome in ("passed", "failure", "error", "skipped")
    }
    print(f"SB3 {version('stable-baselines3')}'s DQN tests with ParallelDQN: {counts}")
    assert result.returncode == 0 and counts["failure"] == counts["error"] == 0, output
    # The parametrized cases run ParallelDQN (their ids name the class), and no DQN case was left out.
    assert any("ParallelDQN" in name for name in outcomes), output
    assert not any("-DQN]" in name or "[DQN]" in name for name in outcomes), output
    if version("stable-baselines3") == "2.9.2":  # the count stock SB3 gives (6 of 67 skip without CUDA, 4 with)
        assert len(outcomes) == 67 and counts["passed"] >= 61, counts
