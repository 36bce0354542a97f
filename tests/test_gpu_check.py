"""scripts/gpu_check.py, the GPU session's one-go script, run on the CPU (``--device cpu --quick``): every part works."""

import json
import sys

import pytest
from conftest import REPO_DIR, check_ok, run_command


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_the_cpu(tmp_path):
    command = [sys.executable, str(REPO_DIR / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick", "--ranks", "1",
               "2", "--out", str(tmp_path)]  # fmt: skip
    result = check_ok(run_command(command, timeout=900, cwd=tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["identity"]["bit_identical"] and results["identity"]["sb3_repeatable"]
    assert [row["rank"] for row in results["devices"]["2"]] == [0, 1]
    assert [row["local_rank"] for row in results["devices"]["2"]] == [0, 1]
    sync = results["sync"]["cpu"]
    assert len(sync["digests"]) == 2 and len(set(sync["digests"])) == 1 and sync["n_updates"] > 100
    for env_id in ("CartPole-v1", "PongNoFrameskip-v4"):
        rows = results["throughput"][env_id]
        assert [row["ranks"] for row in rows] == [1, 2] and all(row["env_steps_per_s"] > 0 for row in rows)
        assert rows[0]["sync_ms"] is None and rows[1]["sync_ms"] > 0
    assert "bit-identical True" in result.stdout and (tmp_path / "results.md").exists()


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    import torch as th

    if th.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    command = [sys.executable, str(REPO_DIR / "scripts" / "gpu_check.py"), "--out", str(tmp_path)]
    result = run_command(command, timeout=120, cwd=tmp_path)
    assert result.returncode != 0 and "no CUDA device: run with --device cpu" in result.stderr
