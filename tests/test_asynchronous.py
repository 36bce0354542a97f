"""
The asynchronous mode (issue 25): ``ParallelDQN(..., learner_ranks=1)`` under ``mpirun -np W`` (one learner, W - 1
actors; tests/mpi_scripts/async_scenario.py), and its parts: the layout, the refusals, the actor's outbox and the
default replay ratio. The rate limiter has its own tests (test_rate_limiter.py).
"""

import numpy as np
import pytest
from conftest import MPI_SCRIPTS, assert_holds, check_ok, rank_reports, run_mpi
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.engine import asynchronous

SCENARIO = str(MPI_SCRIPTS / "async_scenario.py")


def test_the_layout_gives_each_actor_a_learner():
    layout = asynchronous.Layout(learner_ranks=1, world_size=4)
    assert layout.actors == [1, 2, 3] and layout.actors_of(0) == [1, 2, 3] and layout.learner_of(3) == 0


@pytest.mark.parametrize(
    ("learner_ranks", "world_size", "message"),
    [(1, 1, "needs at least 2 MPI ranks"), (2, 4, "learner_ranks > 1"), (0, 4, "an int >= 1"), (3, 3, "at least 4")],
)
def test_layouts_the_mode_does_not_have_are_refused(learner_ranks, world_size, message):
    with pytest.raises(ValueError, match=message):
        asynchronous.check_layout(learner_ranks, world_size)


def test_one_process_refuses_the_asynchronous_mode_before_any_work():
    with pytest.raises(ValueError, match="needs at least 2 MPI ranks"):
        ParallelDQN("MlpPolicy", "CartPole-v1", learner_ranks=1)


def test_the_default_replay_ratio_is_the_synchronous_modes():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", batch_size=64, train_freq=4, gradient_steps=2, n_envs=2)
    assert asynchronous.samples_per_insert(model) == 64 * 2 / (4 * 2)
    model.gradient_steps = -1  # SB3: as many gradient steps as env step calls in the rollout
    assert asynchronous.samples_per_insert(model) == 64 * 4 / (4 * 2)
    model.samples_per_insert = 3.5
    assert asynchronous.samples_per_insert(model) == 3.5


def test_the_outbox_rows_go_into_the_learners_buffer_as_sb3_wrote_them():
    """What an actor's outbox takes from SB3's collect_rollouts, the learner's buffer add()s: the same rows."""
    model = ParallelDQN("MlpPolicy", "CartPole-v1", n_envs=2, buffer_size=100, learning_starts=1000, seed=0)
    model.learn(40)
    sb3_buffer = model.replay_buffer
    outbox = asynchronous.Outbox(2, ReplayBuffer)
    rebuilt = ReplayBuffer(100, model.observation_space, model.action_space, n_envs=2)
    for pos in range(sb3_buffer.pos):
        infos = [{"TimeLimit.truncated": bool(t), "episode": {"r": 1.0, "l": 2}} for t in sb3_buffer.timeouts[pos]]
        outbox.add(sb3_buffer.observations[pos], sb3_buffer.next_observations[pos], sb3_buffer.actions[pos],
                   sb3_buffer.rewards[pos], sb3_buffer.dones[pos], infos)  # fmt: skip
    assert outbox.size() == 2 * sb3_buffer.pos
    rows, episodes, _ = outbox.take()
    assert outbox.size() == 0 and len(episodes) == 2 * sb3_buffer.pos
    for obs, next_obs, action, reward, done, timeouts in rows:
        rebuilt.add(obs, next_obs, action, reward, done, [{"TimeLimit.truncated": t} for t in timeouts])
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        np.testing.assert_array_equal(getattr(rebuilt, name)[: sb3_buffer.pos], getattr(sb3_buffer, name)[: sb3_buffer.pos])


TOTAL = 2000


@pytest.fixture(scope="module", params=[3, 4], ids=["W3", "W4"])
def job(request, tmp_path_factory):
    """One asynchronous CartPole run at W ranks (1 learner, W - 1 actors): W and every rank's report."""
    world_size = request.param
    folder = tmp_path_factory.mktemp(f"async{world_size}")
    check_ok(run_mpi([SCENARIO, str(folder), str(TOTAL)], n_procs=world_size, timeout=180))
    return world_size, folder, rank_reports(folder, "async", world_size)


@pytest.mark.slow  # the scenario tier: two mpirun jobs of 3 and 4 ranks (~20 s on 2 cores)
def test_roles_budget_transitions_and_weights(job):
    world_size, folder, reports = job
    learner, actors = reports[0], reports[1:]
    # one env per actor, train_freq 4: one rollout of every actor is 4 (W - 1) global steps, the last may overshoot
    per_rollout = 4 * (world_size - 1)
    assert_holds(
        {
            "rank 0 learns, the others act": [r["role"] for r in reports] == ["learner"] + ["actor"] * (world_size - 1),
            "the budget counts the actors' steps": all(TOTAL <= r["num_timesteps"] < TOTAL + per_rollout for r in reports),
            "inserted equals sent": learner["inserted"] == learner["sent"] == learner["num_timesteps"],
            "the learner trained, the actors did not": learner["n_updates"] > 100 and all(r["n_updates"] == 0 for r in actors),
            "every rank ends with the learner's weights": len({r["weights_crc"] for r in reports}) == 1,
            "stock DQN.load reads the zip": DQN.load(folder / "model.zip").num_timesteps == learner["num_timesteps"],
        },
        reports,
    )


@pytest.mark.slow
def test_the_replay_ratio_is_held(job):
    _, _, reports = job
    learner = reports[0]
    assert learner["target_samples_per_insert"] == 32 * 1 / (4 * 1)
    assert learner["samples_per_insert"] == pytest.approx(learner["target_samples_per_insert"], rel=0.1), learner


@pytest.mark.slow
@pytest.mark.parametrize(
    ("world_size", "kwargs"),
    [(8, "{}"), (2, '{"replay_buffer_class": "PrioritizedReplayBuffer", "n_steps": 3, "n_envs": 2}')],
    ids=["W8", "W2-prioritized-3-step"],
)
def test_other_layouts_and_buffers(tmp_path, world_size, kwargs):
    """W = 8 (oversubscribed here: steps are counted, not seconds), and prioritized n-step replay with one actor."""
    check_ok(run_mpi([SCENARIO, str(tmp_path), str(TOTAL), kwargs], n_procs=world_size, timeout=400))
    reports = rank_reports(tmp_path, "async", world_size)
    learner = reports[0]
    assert_holds(
        {
            "inserted equals sent": learner["inserted"] == learner["sent"] == learner["num_timesteps"],
            "the budget": all(TOTAL <= r["num_timesteps"] < TOTAL + 4 * 2 * (world_size - 1) for r in reports),
            "the ratio": abs(learner["samples_per_insert"] / learner["target_samples_per_insert"] - 1) < 0.1,
            "the same weights": len({r["weights_crc"] for r in reports}) == 1,
        },
        reports,
    )
