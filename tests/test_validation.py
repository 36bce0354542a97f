"""
The constructor's argument rules (``sb3_parallel_dqn.validation``) against SB3's (issue 23, item 1): every value with
which SB3's ``DQN`` does what its documentation says is accepted, and what SB3 refuses is refused with SB3's
exception type (a subclass with a better message). Values SB3 takes silently but that cannot mean anything (a
negative buffer size, a discount above 1) stay refused, early, naming the argument.
"""

import warnings

import numpy as np
import pytest
import torch as th
from conftest import MPI_SCRIPTS, rank_reports, run_mpi
from stable_baselines3 import DQN

from sb3_parallel_dqn import ConfigError, ParallelDQN, UnsupportedSpaceError
from sb3_parallel_dqn.validation import ARGUMENT_RULES, ConfigAssertionError, check_model_kwargs

SMALL = {"buffer_size": 500, "learning_starts": 0, "batch_size": 16}


def test_item1_tau_zero_accepted_as_sb3():
    """SB3's ``test_dqn_train_with_batch_norm`` uses ``tau=0``: the target network then never moves."""
    model = ParallelDQN("MlpPolicy", "CartPole-v1", tau=0.0, target_update_interval=10, seed=0, **SMALL)
    before = [p.detach().clone() for p in model.q_net_target.parameters()]
    model.learn(100)
    assert model._n_updates > 0
    assert all(th.equal(a, b) for a, b in zip(before, model.q_net_target.parameters(), strict=True))
    assert not all(th.equal(a, b) for a, b in zip(before, model.q_net.parameters(), strict=True))


def test_item1_gradient_steps_zero_collects_without_training():
    """SB3's ``test_offpolicy_collect_rollout_batch_norm``: ``gradient_steps=0`` fills the buffer, no update, no warning."""
    model = ParallelDQN("MlpPolicy", "CartPole-v1", gradient_steps=0, seed=0, **SMALL)
    before = [p.detach().clone() for p in model.q_net.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # e.g. numpy's "Mean of empty slice"
        model.learn(120)
    assert model._n_updates == 0 and model.replay_buffer.size() == 120
    assert all(th.equal(a, b) for a, b in zip(before, model.q_net.parameters(), strict=True))


def test_item1_train_with_zero_gradient_steps_is_sb3s():
    """``train(0)`` called directly (SB3's ``learn`` never does): no update, no random draw, and SB3's own warnings."""

    def train_zero(algo_class):
        model = algo_class("MlpPolicy", "CartPole-v1", seed=0, **SMALL)
        model.learn(40)
        before = [p.detach().clone() for p in model.q_net.parameters()]
        n_updates, rng = model._n_updates, np.random.get_state()[1].copy()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.train(0, 16)
        assert model._n_updates == n_updates and np.array_equal(np.random.get_state()[1], rng)
        assert all(th.equal(a, b) for a, b in zip(before, model.q_net.parameters(), strict=True))
        return sorted(str(w.message) for w in caught), model.logger.name_to_value["train/n_updates"]

    assert train_zero(ParallelDQN) == train_zero(DQN)  # numpy's "Mean of empty slice" of the empty loss list, as SB3


@pytest.mark.slow
def test_item1_gradient_steps_zero_under_mpirun(tmp_path):
    """With two ranks and ``gradient_steps=0`` no rank makes an update: no collective waits for a partner."""
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(MPI_SCRIPTS)!r})\n"
        "from report import report\n"
        "from sb3_parallel_dqn import ParallelDQN\n"
        "model = ParallelDQN('MlpPolicy', 'CartPole-v1', gradient_steps=0, buffer_size=500, learning_starts=0, seed=0)\n"
        "model.learn(200)\n"
        f"report({str(tmp_path)!r}, 'zero_steps', updates=model._n_updates, steps=model.num_timesteps)\n"
    )
    result = run_mpi(["-c", script], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    reports = rank_reports(tmp_path, "zero_steps", 2)  # one file a rank: lines printed by two ranks can interleave
    assert reports == [{"updates": 0, "steps": 200}] * 2, reports


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "MountainCarContinuous-v0"])
def test_item1_unsupported_action_space_is_an_assertion_error(env_id):
    """SB3 asserts ``isinstance(action_space, supported)``: SB3 users catch ``AssertionError``."""
    with pytest.raises(AssertionError):
        DQN("MlpPolicy", env_id)
    with pytest.raises(AssertionError, match="Discrete") as info:
        ParallelDQN("MlpPolicy", env_id)
    assert isinstance(info.value, UnsupportedSpaceError) and isinstance(info.value, ValueError)  # as before, too


@pytest.mark.parametrize("train_freq", [0, -1, (0, "step"), (0, "episode")])
def test_item1_train_freq_zero_refused_as_sb3_does(train_freq):
    """SB3 asserts "Should at least collect one step or episode." (at the first rollout); this refuses it at once."""
    with pytest.raises(AssertionError):
        DQN("MlpPolicy", "CartPole-v1", train_freq=train_freq).learn(10)
    with pytest.raises(ConfigError, match="key 'train_freq'") as info:
        ParallelDQN("MlpPolicy", "CartPole-v1", train_freq=train_freq)
    assert isinstance(info.value, AssertionError) and isinstance(info.value, ConfigAssertionError)


# Values with which SB3's DQN runs as documented, which the rules used to refuse.
ACCEPTED_AS_SB3 = [
    ("tau", 0.0),
    ("gradient_steps", 0),
    ("learning_rate", 0.0),  # torch's Adam takes lr=0: frozen weights
    ("max_grad_norm", float("inf")),  # the usual way to turn clipping off
    ("max_grad_norm", 0.0),
    ("batch_size", np.int64(16)),  # NumPy scalars, from a sweep's arrays
    ("buffer_size", np.int64(500)),
    ("learning_starts", np.int64(0)),
    ("gamma", np.float32(0.9)),
    ("tau", np.float32(0.5)),
    ("target_update_interval", np.int64(5)),
    ("n_steps", np.int64(3)),
    ("max_grad_norm", np.float32(5.0)),
    ("optimize_memory_usage", np.bool_(False)),
    ("double_q", np.bool_(True)),
]


@pytest.mark.parametrize("key, value", ACCEPTED_AS_SB3, ids=[f"{k}={v!r}" for k, v in ACCEPTED_AS_SB3])
def test_item1_values_sb3_accepts_are_accepted(key, value):
    check_model_kwargs(**{key: value})
    kwargs = {**SMALL, "train_freq": 4, key: value}
    if key != "double_q":
        DQN("MlpPolicy", "CartPole-v1", **kwargs).learn(40)  # SB3 takes it: the premise of the test
    model = ParallelDQN("MlpPolicy", "CartPole-v1", seed=0, **kwargs)
    model.learn(40)
    assert model.num_timesteps == 40


def test_item1_the_zoo_accepts_them_too():
    """Config files go through the same rules: ``tau: 0`` and ``gradient_steps: 0`` load."""
    from sb3_parallel_dqn.zoo.hyperparams import _CONVERTERS

    assert _CONVERTERS["tau"](0) == 0.0 and _CONVERTERS["gradient_steps"](0) == 0
    assert _CONVERTERS["max_grad_norm"](float("inf")) == float("inf") and _CONVERTERS["learning_rate"](0) == 0.0


# Values SB3 takes without a word but that mean nothing (SB3 makes a buffer of 1 of buffer_size=0, extrapolates
# with tau=1.5, divides by zero with batch_size=0): still refused, naming the argument.
REFUSED_ON_PURPOSE = [
    ("buffer_size", 0), ("batch_size", 0), ("learning_starts", -1), ("tau", 1.5), ("tau", -0.1), ("gamma", 1.5),
    ("target_update_interval", 0), ("gradient_steps", -2), ("exploration_final_eps", 1.5), ("max_grad_norm", -1.0),
    ("max_grad_norm", float("nan")), ("learning_rate", float("inf")), ("n_steps", 0), ("stats_window_size", 0),
    ("optimize_memory_usage", 1), ("batch_size", True), ("gamma", np.bool_(True)),
]  # fmt: skip


@pytest.mark.parametrize("key, value", REFUSED_ON_PURPOSE, ids=[f"{k}={v!r}" for k, v in REFUSED_ON_PURPOSE])
def test_item1_meaningless_values_stay_refused(key, value):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        ParallelDQN("MlpPolicy", "CartPole-v1", **{key: value})


def test_item1_every_rule_is_covered():
    covered = {key for key, _ in ACCEPTED_AS_SB3 + REFUSED_ON_PURPOSE} | {"train_freq"}
    ours = {"sync_check_interval", "n_envs", "model_parallel_size", "shard_optimizer"}  # not SB3's arguments
    assert set(ARGUMENT_RULES) - ours <= covered | {"exploration_fraction", "exploration_initial_eps"}
