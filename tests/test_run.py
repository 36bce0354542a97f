"""Quick single-process runs through the SB3 API (mirrors SB3's tests/test_run.py)."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import check_ok, run_python
from stable_baselines3.common.callbacks import CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from sb3_parallel_dqn import DuelingQNetwork, ParallelDQN, make_parallel_vec_env

TINY = {"policy_kwargs": {"net_arch": [16]}, "learning_starts": 50, "buffer_size": 1_000}


@pytest.mark.parametrize("env", ["CartPole-v1", "vec"])
def test_run(env):
    env = make_vec_env("CartPole-v1", n_envs=2) if env == "vec" else env
    model = ParallelDQN("MlpPolicy", env, train_freq=4, target_update_interval=100, seed=0, **TINY)
    model.learn(total_timesteps=300)
    # as in SB3, the last rollout finishes: 2 envs x train_freq 4 = 8 steps per rollout
    assert 300 <= model.num_timesteps < 300 + 8 * model.n_envs
    assert model._n_updates > 0


@pytest.mark.parametrize("vec_env_cls, expected", [(None, SubprocVecEnv), ("dummy", DummyVecEnv), (DummyVecEnv, DummyVecEnv)])
def test_n_envs_builds_the_requested_vec_env(vec_env_cls, expected):
    model = ParallelDQN("MlpPolicy", "CartPole-v1", n_envs=2, vec_env_cls=vec_env_cls, **TINY)
    try:
        assert isinstance(model.env, expected)
        assert model.n_envs == 2
        model.learn(200)
    finally:
        model.env.close()


def test_single_env_id_is_built_as_sb3_does():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **TINY)
    assert isinstance(model.env, DummyVecEnv) and model.n_envs == 1


def test_n_envs_must_match_a_given_vec_env():
    with pytest.raises(ValueError, match="n_envs=3"):
        ParallelDQN("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2), n_envs=3)


def test_make_parallel_vec_env_seeds_without_collisions():
    vec_env = make_parallel_vec_env("CartPole-v1", n_envs=3, seed=10, vec_env_cls="dummy")
    assert vec_env._seeds == [10, 11, 12]  # rank 0 of 1: exactly make_vec_env's seeds
    with pytest.raises(ValueError, match="vec_env_cls must be one of"):
        make_parallel_vec_env("CartPole-v1", vec_env_cls="threads")


def test_callbacks_progress_bar_and_tensorboard(tmp_path):
    eval_env = Monitor(gym.make("CartPole-v1"))
    callbacks = [
        EvalCallback(eval_env, eval_freq=100, n_eval_episodes=2, log_path=str(tmp_path / "eval")),
        CheckpointCallback(save_freq=100, save_path=str(tmp_path / "ckpt")),
    ]
    model = ParallelDQN("MlpPolicy", "CartPole-v1", tensorboard_log=str(tmp_path / "tb"), verbose=1, **TINY)
    model.learn(300, callback=callbacks, progress_bar=True)
    assert (tmp_path / "eval" / "evaluations.npz").exists()
    assert len(list((tmp_path / "ckpt").glob("*.zip"))) == 3
    assert [p.name for p in (tmp_path / "tb").iterdir()] == ["ParallelDQN_1"]


def test_predict_and_evaluate_policy():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **TINY).learn(200)
    obs = np.zeros((5, 4), dtype=np.float32)
    actions, state = model.predict(obs, deterministic=True)
    assert actions.shape == (5,) and state is None
    # evaluate_policy plays model.predict's greedy actions: the same returns as a rollout by hand (CartPole pays 1 per
    # step, and both start from the same seed); the old "mean_reward > 0" could not fail
    env = Monitor(gym.make("CartPole-v1"))
    env.reset(seed=4)
    returns, _ = evaluate_policy(model, env, n_eval_episodes=2, return_episode_rewards=True)
    by_hand, env = [], gym.make("CartPole-v1")
    observation, _ = env.reset(seed=4)
    for _ in range(2):
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(observation, deterministic=True)
            observation, reward, terminated, truncated, _ = env.step(int(action))
            total, done = total + float(reward), terminated or truncated
        by_hand.append(total)
        observation, _ = env.reset()
    assert returns == by_hand


@pytest.mark.parametrize("dueling", [False, True])
@pytest.mark.parametrize("policy, env_id", [("CnnPolicy", "image"), ("MultiInputPolicy", "dict")])
def test_other_policy_aliases(policy, env_id, dueling):
    from stable_baselines3.common.envs import SimpleMultiObsEnv

    if env_id == "dict":
        env = SimpleMultiObsEnv(random_start=True)
    else:
        from stable_baselines3.common.envs import FakeImageEnv

        env = FakeImageEnv(screen_height=40, screen_width=40, n_channels=1, discrete=True)
    model = ParallelDQN(policy, env, learning_starts=20, buffer_size=200, batch_size=8, train_freq=4,
                        policy_kwargs={"dueling": dueling})  # fmt: skip
    model.learn(60)
    assert model._n_updates > 0
    assert isinstance(model.q_net, DuelingQNetwork) == dueling


def test_episodic_train_freq_is_allowed_with_one_process():
    model = ParallelDQN("MlpPolicy", "CartPole-v1", train_freq=(1, "episode"), **TINY)
    model.learn(200)
    assert model._n_updates > 0


def test_torch_uses_one_thread_unless_told_otherwise():
    previous = th.get_num_threads()
    try:
        ParallelDQN("MlpPolicy", "CartPole-v1", **TINY)
        assert th.get_num_threads() == 1
        ParallelDQN("MlpPolicy", "CartPole-v1", torch_num_threads=2, **TINY)
        assert th.get_num_threads() == 2
        with pytest.raises(ValueError, match="torch_num_threads"):
            ParallelDQN("MlpPolicy", "CartPole-v1", torch_num_threads=0, **TINY)
    finally:
        th.set_num_threads(previous)


def test_load_takes_its_torch_threads_argument(tmp_path):
    """load(path, torch_num_threads=N) sets N threads (it used to end with 1: the constructor set the default)."""
    previous = th.get_num_threads()
    try:
        ParallelDQN("MlpPolicy", "CartPole-v1", **TINY).save(tmp_path / "model.zip")
        ParallelDQN.load(tmp_path / "model.zip", torch_num_threads=2)
        assert th.get_num_threads() == 2
    finally:
        th.set_num_threads(previous)


def test_omp_num_threads_is_respected_and_one_process_never_starts_mpi():
    """In a fresh process: OMP_NUM_THREADS wins over the one-thread default, and neither importing the package nor
    training without a launcher imports mpi4py.MPI (which would initialise MPI)."""
    code = (
        "import sys, torch; from sb3_parallel_dqn import ParallelDQN; "
        "ParallelDQN('MlpPolicy', 'CartPole-v1', learning_starts=10).learn(50); "
        "print(torch.get_num_threads(), 'mpi4py.MPI' in sys.modules)"
    )
    result = check_ok(run_python(["-c", code], env={"OMP_NUM_THREADS": "2"}))
    assert result.stdout.split()[-2:] == ["2", "False"]
