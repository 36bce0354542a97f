"""Shared test helpers: MPI tests launch real ``mpirun`` processes with a timeout, so a hang fails fast."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
MPI_SCRIPTS = TESTS_DIR / "mpi_scripts"


def mpirun_path() -> str:
    """The mpirun next to this Python (the ``mpich`` wheel installs it there), else the one on PATH.

    There is deliberately no skip: CI installs the mpich wheel, and MPI tests must never pass by not running.
    """
    candidate = Path(sys.executable).parent / "mpirun"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("mpirun")
    if found is None:
        pytest.fail("mpirun not found: install the package's dependencies (the `mpich` wheel ships mpirun)")
    return found


def run_mpi(
    args: list[str],
    n_procs: int = 2,
    timeout: float = 180,
    cwd: Path | str | None = None,
    env: dict | None = None,
    mpirun_args: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """Run ``mpirun -np n_procs python <args>``; kill the whole process group and fail if it outlives ``timeout``."""
    command = [mpirun_path(), *mpirun_args, "-np", str(n_procs), sys.executable, *args]
    return run_command(command, timeout=timeout, cwd=cwd, env=env)


def run_python(args: list[str], timeout: float = 180, cwd: Path | str | None = None, env: dict | None = None):
    """Run ``python <args>`` in a fresh process (no MPI launcher), with a timeout."""
    return run_command([sys.executable, *args], timeout=timeout, cwd=cwd, env=env)


def run_command(command: list[str], timeout: float, cwd: Path | str | None = None, env: dict | None = None):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    # A new session lets us kill mpirun together with its ranks and their env workers on timeout.
    process = subprocess.Popen(
        command,
        cwd=cwd or REPO_DIR,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"timed out after {timeout} s (hang?): {' '.join(command)}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def check_ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Fail with the full output unless the command exited 0."""
    assert result.returncode == 0, (
        f"exit code {result.returncode}: {' '.join(result.args)}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def rank_reports(folder: Path | str, name: str, n_ranks: int) -> list[dict]:
    """
    The reports that ranks 0 to n_ranks - 1 wrote with mpi_scripts/report.py (``FOLDER/<name>_rank<r>.json``), in
    rank order; fails naming every rank whose report is missing.
    """
    paths = [Path(folder) / f"{name}_rank{rank}.json" for rank in range(n_ranks)]
    missing = [rank for rank, path in enumerate(paths) if not path.exists()]
    assert not missing, (
        f"no {name!r} report from rank(s) {missing} in {folder}: {sorted(p.name for p in Path(folder).iterdir())}"
    )
    return [json.loads(path.read_text()) for path in paths]


def reports_present(folder: Path | str, name: str) -> dict[int, dict]:
    """The ``name`` reports that some ranks wrote (a job that ends on a fault leaves only some), by rank."""
    paths = Path(folder).glob(f"{name}_rank*.json")
    return {int(path.stem.rsplit("_rank", 1)[1]): json.loads(path.read_text()) for path in paths}


def assert_holds(properties: dict[str, bool], details: object = "") -> None:
    """
    Every named property holds. A failure lists all those that do not, not only the first, followed by ``details``
    (the values they were computed from, the job's output).
    """
    failed = [name for name, holds in properties.items() if not holds]
    assert not failed, f"{len(failed)} of {len(properties)} properties do not hold: {failed}\n{details}"


def run_main(main: Callable[[list[str]], int], args: list) -> subprocess.CompletedProcess:
    """
    Run a command line's ``main(args)`` (``sb3_parallel_dqn.train.main``...) in this process, with its exit code and
    what it printed, as :func:`run_python` returns them: the same code path without a new interpreter's seconds of
    start-up. What only a real process shows (no traceback on stderr, the exit status) has run_python tests of its own.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def diverged_properties(caught: list) -> dict[str, bool]:
    """Per rank, that it caught the WeightsDivergedError of a drift injected on rank 1 (the diverge scenarios)."""
    properties = {}
    for rank, error in enumerate(caught):
        message = (error or {}).get("message", "")
        properties |= {
            f"rank {rank} caught WeightsDivergedError": (error or {}).get("type") == "WeightsDivergedError",
            f"rank {rank}: 'Weights diverged'": "Weights diverged" in message,
            f"rank {rank}: names rank 1": "rank(s) [1] differ from rank 0" in message,
        }
    return properties
