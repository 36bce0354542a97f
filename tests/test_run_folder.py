"""Run folders: ids claimed atomically by jobs that start together in one log folder (issue 23, item 5)."""

import threading
import time

from sb3_parallel_dqn.zoo import run_folder
from sb3_parallel_dqn.zoo.run_folder import claim_run_dir, run_ids


def test_item5_concurrent_jobs_claim_different_run_ids(tmp_path, monkeypatch):
    """Item 5: two jobs started together in one -f picked the same run id (mkdir(exist_ok=True)) and shared a folder."""
    listed = run_folder.run_ids

    def slow_run_ids(*args, **kwargs):
        found = listed(*args, **kwargs)
        time.sleep(0.05)  # every job lists the folder before any creates its own: the race, every time
        return found

    monkeypatch.setattr(run_folder, "run_ids", slow_run_ids)
    jobs, claimed = 6, []
    barrier = threading.Barrier(jobs)

    def job():
        barrier.wait()
        claimed.append(claim_run_dir(tmp_path, "CartPole-v1"))

    threads = [threading.Thread(target=job) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(path.name for path in claimed) == sorted(f"CartPole-v1_{i}" for i in range(1, jobs + 1))
    assert all(path.is_dir() for path in claimed)


def test_item5_claim_skips_names_taken_by_files_and_keeps_the_uuid(tmp_path):
    (tmp_path / "parallel_dqn").mkdir()
    (tmp_path / "parallel_dqn" / "CartPole-v1_1").write_text("not a run folder")
    assert claim_run_dir(tmp_path, "CartPole-v1").name == "CartPole-v1_2"
    assert claim_run_dir(tmp_path, "CartPole-v1", "_abc").name == "CartPole-v1_3_abc"
    assert list(run_ids(tmp_path, "CartPole-v1")) == [2, 3]
    assert claim_run_dir(tmp_path, "MinAtar/Breakout-v1").name == "MinAtar-Breakout-v1_1"
