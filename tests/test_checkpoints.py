"""Atomic saves, checkpoint file names, and resuming a run with exactly the counters of an uninterrupted one."""

import os
import pathlib

import pytest
import stable_baselines3.common.base_class as base_class
import torch as th
from conftest import MPI_SCRIPTS, reports_present, run_mpi, run_python
from stable_baselines3.common.save_util import save_to_zip_file

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.io.checkpoints import (
    ParallelCheckpointCallback,
    atomic_path,
    list_checkpoints,
    rank_path,
    replay_buffer_path,
    replay_buffer_shards,
    saved_shards,
    vecnormalize_path,
)

KWARGS = dict(
    learning_starts=100, train_freq=16, gradient_steps=4, target_update_interval=50, batch_size=16,
    exploration_fraction=0.5, learning_rate=1e-3, policy_kwargs=dict(net_arch=[16]),
    n_envs=2, vec_env_cls="dummy",
)  # fmt: skip
# Each rollout is train_freq * n_envs = 32 global steps.
ROLLOUT = 32


def make_model(seed=0):
    return ParallelDQN("MlpPolicy", "CartPole-v1", seed=seed, **KWARGS)


def counters(model):
    """Everything that decides where schedules, updates and the target network stand."""
    return {
        "num_timesteps": model.num_timesteps,
        "_n_updates": model._n_updates,
        "_n_calls": model._n_calls,
        "_total_timesteps": model._total_timesteps,
        "exploration_rate": model.exploration_rate,
        "progress_remaining": model._current_progress_remaining,
        "learning_rate": model.policy.optimizer.param_groups[0]["lr"],
        "target_phase": model._n_calls % max(model.target_update_interval // model.n_envs, 1),
        "optimizer_steps": int(next(iter(model.policy.optimizer.state.values()))["step"]),
    }


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "model.zip"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target, "zip") as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]  # no temporary file left
    with atomic_path(tmp_path / "model", "zip") as temporary:  # SB3 adds the suffix, so does atomic_path
        assert temporary.suffix == ".zip" and temporary.parent == tmp_path
        temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_crash_while_saving_keeps_the_previous_model(tmp_path, monkeypatch):
    model = make_model()
    path = tmp_path / "model.zip"
    model.save(path)
    before = path.read_bytes()

    def crash_after_half(save_path, *args, **kwargs):
        save_to_zip_file(save_path, *args, **kwargs)
        with open(save_path, "r+b") as file:  # a truncated zip, as a crash mid-write would leave it
            file.truncate(os.path.getsize(save_path) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(base_class, "save_to_zip_file", crash_after_half)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]
    monkeypatch.undo()
    ParallelDQN.load(path)  # still a valid model


def test_file_names():
    assert rank_path(pathlib.Path("a/replay_buffer.pkl"), 1, 2).name == "replay_buffer.rank1.pkl"
    assert rank_path(pathlib.Path("a/replay_buffer.pkl"), 0, 1).name == "replay_buffer.pkl"
    assert replay_buffer_path("run/rl_model_1024_steps.zip").name == "rl_model_replay_buffer_1024_steps.pkl"
    assert replay_buffer_path("run/CartPole-v1.zip").name == "replay_buffer.pkl"
    checkpoint_stats = os.path.join("run", "rl_model_vecnormalize_64_steps.pkl")
    assert str(vecnormalize_path("run/rl_model_64_steps.zip", "Env-v0")) == checkpoint_stats
    assert str(vecnormalize_path("run/Env-v0.zip", "Env-v0")) == os.path.join("run", "Env-v0", "vecnormalize.pkl")


def test_replay_buffer_shards(tmp_path):
    model_file = tmp_path / "rl_model_64_steps.zip"
    assert replay_buffer_shards(model_file) == ([], None)
    for rank in (0, 1, 2):
        (tmp_path / f"rl_model_replay_buffer_64_steps.rank{rank}.pkl").write_bytes(b"")
    (tmp_path / "rl_model_replay_buffer_640_steps.rank3.pkl").write_bytes(b"")  # another checkpoint's shard
    shards, world_size = replay_buffer_shards(model_file)
    assert world_size == 3 and [p.name for p in shards] == [f"rl_model_replay_buffer_64_steps.rank{r}.pkl" for r in range(3)]
    (tmp_path / "rl_model_replay_buffer_64_steps.rank1.pkl").unlink()
    with pytest.raises(ValueError, match=r"rank\(s\) \[1\] missing"):
        replay_buffer_shards(model_file)


def as_rank(monkeypatch, rank, world_size):
    """This process seen as rank ``rank`` of ``world_size`` by the file-naming code (no collective is involved)."""
    monkeypatch.setattr(comm, "rank", lambda: rank)
    monkeypatch.setattr(comm, "world_size", lambda: world_size)


def test_a_save_removes_the_shards_of_an_earlier_save_by_another_world_size(tmp_path, monkeypatch):
    """Rank 0 deletes the files a save by another number of ranks left under the same name, so no load mixes saves."""
    model = make_model()
    model.learn(64)

    def save(world_size):
        for rank in range(world_size):  # each rank of a job saves its own shard
            with monkeypatch.context() as patch:
                as_rank(patch, rank, world_size)
                model.save_replay_buffer(tmp_path / "buffer")
        return sorted(p.name for p in tmp_path.iterdir())

    assert save(4) == [f"buffer.rank{rank}.pkl" for rank in range(4)]
    assert save(2) == ["buffer.rank0.pkl", "buffer.rank1.pkl"]  # not ranks 2 and 3 of the earlier save
    assert saved_shards(tmp_path / "buffer")[1] == 2
    assert save(1) == ["buffer.pkl"]
    assert save(2) == ["buffer.rank0.pkl", "buffer.rank1.pkl"]
    (tmp_path / "other.pkl").write_bytes(b"")  # another name: left alone
    assert save(1) == ["buffer.pkl", "other.pkl"]
    # Both sets side by side (copied there by hand): which one is meant is unknown, so loading refuses.
    (tmp_path / "buffer.rank0.pkl").write_bytes(b"")
    with pytest.raises(ValueError, match=r"both buffer.pkl \(saved by one process\) and 1 rank file"):
        model.load_replay_buffer(tmp_path / "buffer")


def test_item5_shard_names_not_ending_in_pkl_keep_their_whole_name(tmp_path, monkeypatch):
    """Issue 23, item 5: rank files of a name not ending in .pkl were not found (_rank_files cut four characters)."""
    model = make_model()
    model.learn(64)
    for rank in (0, 1):
        with monkeypatch.context() as patch:
            as_rank(patch, rank, 2)
            model.save_replay_buffer(tmp_path / "buffer.data")
    names = ["buffer.data.rank0.pkl", "buffer.data.rank1.pkl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert [p.name for p in saved_shards(tmp_path / "buffer.data")[0]] == names
    fresh = make_model(seed=1)
    with monkeypatch.context() as patch:
        as_rank(patch, 1, 2)
        fresh.load_replay_buffer(tmp_path / "buffer.data")
    assert fresh.replay_buffer.pos == model.replay_buffer.pos
    # a later save by one process removes the rank files of the same name
    model.save_replay_buffer(tmp_path / "buffer.data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buffer.data"]
    assert saved_shards(tmp_path / "buffer.data")[1] == 1


def test_load_replay_buffer_on_another_world_size(tmp_path, monkeypatch):
    """ParallelDQN.load_replay_buffer: rank r of W loads shard r mod W_saved, whoever saved; an uneven share is refused."""
    model = make_model()
    model.learn(64)
    for rank in (0, 1):  # two different shards, as two ranks would save them
        with monkeypatch.context() as patch:
            as_rank(patch, rank, 2)
            model.save_replay_buffer(tmp_path / "buffer")
        model.learn(64, reset_num_timesteps=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buffer.rank0.pkl", "buffer.rank1.pkl"]
    assert [p.name for p in saved_shards(tmp_path / "buffer")[0]] == ["buffer.rank0.pkl", "buffer.rank1.pkl"]
    positions = {}
    fresh = make_model(seed=1)
    for rank, world_size in [(0, 1), (0, 4), (1, 4), (2, 4), (3, 4)]:
        with monkeypatch.context() as patch:
            as_rank(patch, rank, world_size)
            fresh.load_replay_buffer(tmp_path / "buffer")
            positions[rank, world_size] = fresh.replay_buffer.pos
    assert positions == {(0, 1): 32, (0, 4): 32, (1, 4): 64, (2, 4): 32, (3, 4): 64}
    with monkeypatch.context() as patch:
        as_rank(patch, 0, 3)
        with pytest.raises(ValueError, match="cannot be shared evenly by 3 ranks"):
            fresh.load_replay_buffer(tmp_path / "buffer")
    # saved by one process: every rank of a larger job starts from it
    model.save_replay_buffer(tmp_path / "single")
    with monkeypatch.context() as patch:
        as_rank(patch, 1, 2)
        fresh.load_replay_buffer(tmp_path / "single.pkl")
        assert fresh.replay_buffer.pos == 96
        with pytest.raises(FileNotFoundError, match=r"nothing\.rank1\.pkl"):
            fresh.load_replay_buffer(tmp_path / "nothing")  # SB3's error, naming this rank's file


def test_checkpoints_fall_on_rollout_boundaries(tmp_path):
    model = make_model()
    callback = ParallelCheckpointCallback(200, str(tmp_path), save_replay_buffer=True)
    model.learn(600, callback=callback)
    steps = list(list_checkpoints(tmp_path))
    # due at 200, 400, 600 global steps; written once the rollout holding that step is trained on
    assert steps == [224, 416, 608]
    assert all(step % ROLLOUT == 0 for step in steps)
    for step in steps:
        saved = ParallelDQN.load(tmp_path / f"rl_model_{step}_steps.zip")
        assert saved.num_timesteps == step
        # trained on every rollout collected so far: (step - learning_starts) rounded to rollouts, 4 updates each
        assert saved._n_updates == 4 * sum(1 for t in range(ROLLOUT, step + 1, ROLLOUT) if t > 100)
        assert (tmp_path / f"rl_model_replay_buffer_{step}_steps.pkl").exists()


@pytest.mark.parametrize("resume_at", [224, 416])
def test_resume_continues_counters_exactly(tmp_path, resume_at):
    uninterrupted = make_model()
    uninterrupted.learn(600, callback=ParallelCheckpointCallback(200, str(tmp_path), save_replay_buffer=True))

    checkpoint = tmp_path / f"rl_model_{resume_at}_steps.zip"
    resumed = ParallelDQN.load(checkpoint, env=make_model(seed=1).get_env())
    resumed.load_replay_buffer(replay_buffer_path(checkpoint))
    assert resumed.replay_buffer.pos == resume_at // 2  # the buffer holds every transition of the first part
    resumed_dir = tmp_path / "resumed"
    resumed.learn(
        resumed._total_timesteps - resumed.num_timesteps,
        reset_num_timesteps=False,
        callback=ParallelCheckpointCallback(200, str(resumed_dir)),
    )
    assert counters(resumed) == counters(uninterrupted)
    assert resumed.replay_buffer.pos == uninterrupted.replay_buffer.pos
    # and the checkpoints of the resumed part fall where the uninterrupted run's did
    assert list(list_checkpoints(resumed_dir)) == [s for s in list_checkpoints(tmp_path) if s > resume_at]


def test_resume_with_another_layout_keeps_the_target_phase(tmp_path):
    """Resumed with 1 env instead of 2, the target network is updated on the same global steps."""
    model = make_model()
    model.learn(320)
    model.save(tmp_path / "model.zip")
    one_env = ParallelDQN.load(tmp_path / "model.zip", env=ParallelDQN("MlpPolicy", "CartPole-v1").get_env())
    updates = []
    target_params = one_env.q_net_target.parameters
    one_env._on_step_original = one_env._on_step

    def on_step():
        before = [p.detach().clone() for p in target_params()]
        one_env._on_step_original()
        if any(not th.equal(a, b.detach()) for a, b in zip(before, target_params(), strict=True)):
            updates.append(one_env.num_timesteps)

    one_env._on_step = on_step
    one_env.learn(200, reset_num_timesteps=False)
    # target_update_interval 50 global steps: 350, 400, 450, 500 (one env: one global step per call)
    assert updates == [350, 400, 450, 500]


def _run_signalled_in_the_last_rollout(folder, result):
    reports = reports_present(folder, "signal_last_rollout")
    assert reports, result.stdout + result.stderr
    return reports


def test_item5_a_signal_in_the_last_rollout_still_writes_the_final_model(tmp_path):
    """Issue 23, item 5: SIGTERM in the last rollout exited 143 with a checkpoint only, no final <env>.zip."""
    result = run_python([str(MPI_SCRIPTS / "signal_last_rollout.py"), str(tmp_path), "0"], timeout=120)
    reports = _run_signalled_in_the_last_rollout(tmp_path, result)
    assert reports[0]["exit"] == 143 and result.returncode == 143, result.stdout + result.stderr
    assert {"CartPole-v1.zip", "replay_buffer.pkl"} <= set(reports[0]["files"]), reports
    assert "training is complete, final evaluation skipped" in result.stdout
    model = ParallelDQN.load(tmp_path / "parallel_dqn" / "CartPole-v1_1" / "CartPole-v1.zip")
    assert model.num_timesteps == 256


@pytest.mark.slow
def test_item5_a_signal_to_one_rank_in_the_last_rollout_under_mpirun(tmp_path):
    """Issue 23, item 5, under mpirun: every rank writes its final files (model, its shard) and exits 143."""
    result = run_mpi([str(MPI_SCRIPTS / "signal_last_rollout.py"), str(tmp_path), "1"], timeout=180)
    reports = _run_signalled_in_the_last_rollout(tmp_path, result)
    assert sorted(reports) == [0, 1], result.stdout + result.stderr
    assert [reports[rank]["exit"] for rank in (0, 1)] == [143, 143]
    expected = {"CartPole-v1.zip", "replay_buffer.rank0.pkl", "replay_buffer.rank1.pkl"}
    assert expected <= set(reports[0]["files"]), reports
