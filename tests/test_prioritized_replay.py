"""PrioritizedReplayBuffer and its use by ParallelDQN, against brute-force references."""

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import NStepReplayBuffer
from torch.nn import functional as F

from sb3_parallel_dqn import ParallelDQN, PrioritizedReplayBuffer
from sb3_parallel_dqn.losses import td_loss
from sb3_parallel_dqn.zoo.hyperparams import load_hyperparams

OBSERVATION_SPACE = spaces.Box(-1e6, 1e6, shape=(2,), dtype=np.float32)
ACTION_SPACE = spaces.Discrete(3)


def _filled_buffer(n_rows: int, n_envs: int = 1, buffer_size: int = 100, **kwargs) -> PrioritizedReplayBuffer:
    """A buffer whose observation of row r, env e is (r, e), so that a sample tells where it came from."""
    buffer = PrioritizedReplayBuffer(buffer_size, OBSERVATION_SPACE, ACTION_SPACE, device="cpu", n_envs=n_envs, **kwargs)
    for row in range(n_rows):
        obs = np.array([[row, env] for env in range(n_envs)], dtype=np.float32)
        done = np.array([row % 7 == 6] * n_envs)
        buffer.add(
            obs, obs + np.array([0.5, 0]), np.full((n_envs, 1), row % 3), np.full(n_envs, float(row)), done, [{}] * n_envs
        )
    return buffer


def test_importance_weights_match_the_definition():
    buffer = _filled_buffer(40, alpha=0.7, beta=0.5)
    rng = np.random.default_rng(0)
    errors = rng.random(40) * 3
    buffer.update_priorities(np.arange(40), errors)
    _, weights, leaves = buffer.sample_prioritized(64)
    priorities = (np.abs(errors) + buffer.epsilon) ** 0.7
    probabilities = priorities / priorities.sum()
    np.testing.assert_allclose(weights, (40 * probabilities[leaves]) ** -0.5, rtol=1e-10)
    assert buffer.max_priority == pytest.approx(errors.max() + buffer.epsilon)


def test_new_transitions_get_the_largest_priority_so_far():
    buffer = _filled_buffer(10, alpha=0.5)
    np.testing.assert_array_equal(buffer.tree.priorities[:10], 1.0)  # max_priority starts at 1
    buffer.update_priorities(np.array([2, 3]), np.array([0.1, 8.0]))
    obs = np.zeros((1, 2), dtype=np.float32)
    buffer.add(obs, obs, np.zeros((1, 1)), np.zeros(1), np.array([False]), [{}])
    assert buffer.tree.priorities[10] == pytest.approx((8.0 + buffer.epsilon) ** 0.5)
    assert buffer.tree.priorities[2] == pytest.approx((0.1 + buffer.epsilon) ** 0.5)


def test_alpha_zero_is_uniform_with_unit_weights():
    buffer = _filled_buffer(30, alpha=0.0)
    buffer.update_priorities(np.arange(30), np.random.default_rng(0).random(30))
    _, weights, _ = buffer.sample_prioritized(50)
    np.testing.assert_allclose(weights, 1.0)


def test_beta_is_annealed_on_progress():
    buffer = _filled_buffer(1, beta=0.4, final_beta=1.0)
    buffer.set_progress(1.0)
    assert buffer.beta == pytest.approx(0.4)
    buffer.set_progress(0.25)
    assert buffer.beta == pytest.approx(0.85)
    buffer.set_progress(-0.01)  # SB3's progress overshoots 0 by up to one rollout
    assert buffer.beta == pytest.approx(1.0)


@pytest.mark.parametrize("n_envs", [1, 3])
def test_samples_are_the_drawn_transitions(n_envs):
    np.random.seed(0)
    buffer = _filled_buffer(25, n_envs=n_envs)
    buffer.update_priorities(np.arange(25 * n_envs), np.arange(25 * n_envs) % 5)  # some rows near-zero
    samples, _, leaves = buffer.sample_prioritized(200)
    rows, envs = np.divmod(leaves, n_envs)
    np.testing.assert_array_equal(samples.observations.numpy(), np.stack([rows, envs], axis=1))
    np.testing.assert_array_equal(samples.actions.numpy()[:, 0], rows % 3)
    np.testing.assert_array_equal(samples.rewards.numpy()[:, 0], rows)
    np.testing.assert_array_equal(samples.next_observations.numpy(), np.stack([rows + 0.5, envs], axis=1))
    assert buffer.n_envs == n_envs and buffer.observations.shape[1] == n_envs  # the one-env views were undone


@pytest.mark.parametrize("n_envs", [1, 2])
def test_n_step_samples_match_sb3s_n_step_buffer(n_envs):
    """Same rows and envs: the same n-step returns, discounts, dones and next observations as NStepReplayBuffer."""
    ours = _filled_buffer(30, n_envs=n_envs, buffer_size=20, n_steps=3, gamma=0.9)  # wrapped around once
    np.random.seed(1)
    samples, _, leaves = ours.sample_prioritized(64)
    rows, envs = np.divmod(leaves, n_envs)
    for env in range(n_envs):
        # SB3's buffer draws the env of each row: with a one-env copy of the storage it can only draw env `env`
        rows_per_env = ours.buffer_size  # SB3 divides buffer_size by n_envs
        single = NStepReplayBuffer(rows_per_env, OBSERVATION_SPACE, ACTION_SPACE, device="cpu", n_steps=3, gamma=0.9)
        for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
            setattr(single, name, getattr(ours, name)[:, env : env + 1].copy())
        single.pos, single.full = ours.pos, ours.full
        expected = single._get_samples(rows[envs == env])
        for name in ("observations", "actions", "next_observations", "dones", "rewards", "discounts"):
            np.testing.assert_array_equal(
                getattr(samples, name)[th.as_tensor(envs == env)], getattr(expected, name), err_msg=name
            )


def test_optimize_memory_usage_never_draws_the_overwritten_row():
    buffer = _filled_buffer(45, buffer_size=20, optimize_memory_usage=True, handle_timeout_termination=False)
    assert buffer.full and buffer.tree.priorities[buffer.pos] == 0
    _, _, leaves = buffer.sample_prioritized(4000)
    assert buffer.pos not in leaves
    assert set(leaves) == set(range(20)) - {buffer.pos}
    with pytest.raises(ValueError, match="n_steps=1"):
        PrioritizedReplayBuffer(10, OBSERVATION_SPACE, ACTION_SPACE, optimize_memory_usage=True, n_steps=3)


def test_optimize_memory_usage_with_several_envs_samples_as_sb3():
    """Regression (issue 12, item 4): the one-env views read next_observations, which SB3 never creates here."""
    from stable_baselines3.common.buffers import ReplayBuffer

    kwargs = {"optimize_memory_usage": True, "handle_timeout_termination": False}
    ours = _filled_buffer(33, n_envs=2, buffer_size=20, **kwargs)  # wrapped around
    assert not hasattr(ours, "next_observations")
    np.random.seed(2)
    samples, _, leaves = ours.sample_prioritized(64)
    rows, envs = np.divmod(leaves, 2)
    for env in range(2):
        single = ReplayBuffer(ours.buffer_size, OBSERVATION_SPACE, ACTION_SPACE, device="cpu", **kwargs)
        for name in ("observations", "actions", "rewards", "dones", "timeouts"):
            setattr(single, name, getattr(ours, name)[:, env : env + 1].copy())
        single.pos, single.full = ours.pos, ours.full
        expected = single._get_samples(rows[envs == env])
        for name in ("observations", "actions", "next_observations", "dones", "rewards"):
            np.testing.assert_array_equal(
                getattr(samples, name)[th.as_tensor(envs == env)], getattr(expected, name), err_msg=name
            )


def test_optimize_memory_usage_with_several_envs_trains():
    model = _per_model(
        n_envs=2, vec_env_cls="dummy", optimize_memory_usage=True, replay_buffer_kwargs={"handle_timeout_termination": False}
    )
    model.learn(400)
    assert model._n_updates > 0


def test_dict_observations_are_refused():
    with pytest.raises(ValueError, match="Dict"):
        PrioritizedReplayBuffer(10, spaces.Dict({"a": OBSERVATION_SPACE}), ACTION_SPACE)


def _per_model(**kwargs):
    return ParallelDQN(
        "MlpPolicy", "CartPole-v1", learning_starts=200, buffer_size=2000, batch_size=32, train_freq=8, gradient_steps=4,
        replay_buffer_class=PrioritizedReplayBuffer, policy_kwargs={"net_arch": [16]}, seed=0, **kwargs,
    )  # fmt: skip


def test_weighted_loss_and_priority_update_on_a_real_batch():
    model = _per_model()
    model.learn(400)
    buffer = model.replay_buffer
    np.random.seed(5)
    _, raw_weights, _ = buffer.sample_prioritized(32)
    np.random.seed(5)
    model._learner.start_updates(1, 32)
    replay_data, weights = model._learner.sample(32)
    leaves = model._learner._sampled_leaves
    np.testing.assert_allclose(weights.numpy()[:, 0], raw_weights / raw_weights.max(), rtol=1e-6)
    loss, td_errors = td_loss(model.q_net, model.q_net_target, replay_data, model.gamma, weights=weights)
    model._learner.end_updates()
    with th.no_grad():
        current = model.q_net(replay_data.observations).gather(1, replay_data.actions.long())
        target = (
            replay_data.rewards
            + (1 - replay_data.dones) * model.gamma * model.q_net_target(replay_data.next_observations).max(1).values[:, None]
        )
    assert th.allclose(loss, (weights * F.smooth_l1_loss(current, target, reduction="none")).mean())
    assert th.allclose(td_errors, (current - target)[:, 0])

    # train() writes |TD error| + epsilon (to the power alpha) back to the sampled transitions, after the step
    np.random.seed(5)
    model.train(gradient_steps=1, batch_size=32)
    expected = (np.abs(td_errors.numpy()) + buffer.epsilon) ** buffer.alpha
    np.testing.assert_allclose(buffer.tree.priorities[leaves], expected, rtol=1e-5)


def test_learns_saves_and_loads_with_n_steps_and_several_envs(tmp_path):
    model = _per_model(n_steps=3, n_envs=2, vec_env_cls="dummy", double_q=True)
    model.learn(1000)
    buffer = model.replay_buffer
    assert isinstance(buffer, PrioritizedReplayBuffer) and buffer.n_steps == 3 and buffer.gamma == model.gamma
    assert buffer.beta > buffer.initial_beta  # annealed on progress
    assert not np.allclose(buffer.tree.priorities[: buffer.size() * 2], buffer.tree.priorities[0])  # updated

    model.save(tmp_path / "per")
    model.save_replay_buffer(tmp_path / "buffer")
    loaded = ParallelDQN.load(tmp_path / "per", env=model.get_env())
    loaded.load_replay_buffer(tmp_path / "buffer")
    assert loaded.replay_buffer_class is PrioritizedReplayBuffer
    np.testing.assert_array_equal(loaded.replay_buffer.tree.priorities, buffer.tree.priorities)
    assert loaded.replay_buffer.max_priority == buffer.max_priority
    loaded.learn(200, reset_num_timesteps=False)  # keeps sampling and updating the loaded tree
    assert loaded._n_updates > model._n_updates


def test_users_replay_buffer_kwargs_are_not_modified():
    kwargs = {"alpha": 0.5}
    model = _per_model(n_steps=2, replay_buffer_kwargs=kwargs)
    assert kwargs == {"alpha": 0.5}
    assert model.replay_buffer.n_steps == 2 and model.replay_buffer.alpha == 0.5


def test_sb3_loads_a_prioritized_model(tmp_path):
    model = _per_model()
    model.learn(300)
    model.save(tmp_path / "per")
    stock = DQN.load(tmp_path / "per")
    for name, tensor in model.policy.state_dict().items():
        assert th.equal(stock.policy.state_dict()[name], tensor)


def test_yaml_names_the_buffer(tmp_path):
    conf = tmp_path / "dqn.yml"
    conf.write_text(
        "CartPole-v1:\n  replay_buffer_class: PrioritizedReplayBuffer\n"
        '  replay_buffer_kwargs: "dict(alpha=0.5, beta=0.6)"\n  policy_kwargs: "dict(dueling=True)"\n'
    )
    hyperparams, _ = load_hyperparams("CartPole-v1", conf)
    assert hyperparams["replay_buffer_class"] is PrioritizedReplayBuffer
    assert hyperparams["replay_buffer_kwargs"] == {"alpha": 0.5, "beta": 0.6}
    assert hyperparams["policy_kwargs"] == {"dueling": True}


def test_same_seed_same_training():
    models = []
    for _ in range(2):  # one after the other: the seed is applied at construction, to the global random generators
        models.append(_per_model(n_steps=2).learn(600))
    for name, tensor in models[0].policy.state_dict().items():
        assert th.equal(models[1].policy.state_dict()[name], tensor), name
    np.testing.assert_array_equal(models[0].replay_buffer.tree.priorities, models[1].replay_buffer.tree.priorities)
