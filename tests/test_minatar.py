"""MinAtar: ids that work without registering them, the paper's network, config entries, and a run under mpirun."""

import re

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import REPO_DIR, check_ok, run_mpi, run_python
from gymnasium import spaces
from stable_baselines3 import DQN

from sb3_parallel_dqn import MinAtarCNN, ParallelDQN, make_parallel_vec_env
from sb3_parallel_dqn.env_names import env_file_name
from sb3_parallel_dqn.zoo.hyperparams import load_hyperparams

pytest.importorskip("minatar")

GAMES = ["Breakout", "SpaceInvaders", "Asterix", "Freeway", "Seaquest"]


@pytest.mark.slow
def test_env_workers_register_the_ids_themselves() -> None:
    """A spawn worker starts as a fresh interpreter, where gymnasium >= 1.0 does not know MinAtar's ids."""
    env = make_parallel_vec_env("MinAtar/Breakout-v1", n_envs=2, seed=0, vec_env_cls="subproc",
                                vec_env_kwargs={"start_method": "spawn"})  # fmt: skip
    try:
        obs = env.reset()
        assert obs.shape == (2, 10, 10, 4) and obs.dtype == bool
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("dueling", [False, True])
def test_the_papers_network_from_the_config_entries(dueling: bool) -> None:
    """Each game's entry names MinAtarCNN: conv 3x3x16, 128 units, then the Q-values (one linear layer)."""
    for game in GAMES:
        params, section = load_hyperparams(f"MinAtar/{game}-v1")
        assert section == f"MinAtar/{game}-v1"
        assert params["policy_kwargs"] == {"features_extractor_class": MinAtarCNN, "net_arch": []}
    model = ParallelDQN("MlpPolicy", "MinAtar/Seaquest-v1", policy_kwargs={**params["policy_kwargs"], "dueling": dueling},
                        learning_starts=0, buffer_size=500, train_freq=4, seed=0)  # fmt: skip
    q_net = model.q_net
    conv = q_net.features_extractor.conv[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (10, 16, (3, 3), (1, 1))
    assert q_net.features_extractor.linear[0].in_features == 16 * 8 * 8 and q_net.features_dim == 128
    heads = [q_net.value_head, q_net.advantage_head] if dueling else list(q_net.q_net)
    assert [type(layer) for layer in heads] == [th.nn.Linear] * len(heads)
    model.learn(200)
    assert model._n_updates > 0


def test_channels_first_inputs_and_stock_sb3() -> None:
    space = spaces.Box(0, 1, (4, 10, 10), bool)
    extractor = MinAtarCNN(space, channels_last=False)
    assert extractor(th.zeros(3, 4, 10, 10)).shape == (3, 128)
    # SB3's DQN takes it as it is, from policy_kwargs (as the benchmark's baseline does).
    model = DQN("MlpPolicy", gym.make("MinAtar/Breakout-v1"), policy_kwargs={"features_extractor_class": MinAtarCNN},
                learning_starts=0, buffer_size=100, seed=0)  # fmt: skip
    action, _ = model.predict(np.zeros((10, 10, 4), bool))
    assert 0 <= int(action) < 3


def test_run_folders_are_named_as_the_zoo_names_them() -> None:
    assert env_file_name("MinAtar/Breakout-v1") == "MinAtar-Breakout-v1"
    assert env_file_name("ale_py:ALE/Pong-v5") == "ALE-Pong-v5"
    assert env_file_name("CartPole-v1") == "CartPole-v1"


@pytest.mark.slow
def test_minatar_under_mpirun(tmp_path) -> None:
    """train.py, evaluate.py and plot.py with an id that has a slash, on 2 ranks; the zoo's folder names."""
    env_id = "MinAtar/SpaceInvaders-v1"
    args = [str(REPO_DIR / "scripts" / "train.py"), "--env", env_id, "-n", "3000", "--seed", "0", "-f", str(tmp_path),
            "--eval-freq", "1500", "--eval-episodes", "2", "--final-eval-episodes", "2",
            "-params", "learning_starts:500", "buffer_size:2000"]  # fmt: skip
    result = check_ok(run_mpi(args, timeout=300))
    assert f"config entry '{env_id}'" in result.stdout
    run_dir = tmp_path / "parallel_dqn" / "MinAtar-SpaceInvaders-v1_1"
    model = ParallelDQN.load(run_dir / "MinAtar-SpaceInvaders-v1.zip")
    assert isinstance(model.q_net.features_extractor, MinAtarCNN)
    assert model.num_timesteps >= 3000 and model._n_updates > 0
    assert (run_dir / "MinAtar-SpaceInvaders-v1" / "config.yml").exists()
    assert sorted(p.name for p in run_dir.glob("*.monitor.csv")) == ["0.0.monitor.csv", "1.0.monitor.csv"]
    result = check_ok(run_python([str(REPO_DIR / "scripts" / "evaluate.py"), "--env", env_id, "-f", str(tmp_path),
                                  "-n", "2", "--seed", "0"]))  # fmt: skip
    assert re.search(rf"{env_id}: mean return -?[\d.]+ \+/- [\d.]+ over 2 episodes", result.stdout), result.stdout
    check_ok(run_python([str(REPO_DIR / "scripts" / "plot.py"), "--env", env_id, "-f", str(tmp_path), "-o",
                         str(tmp_path / "curves.png")]))  # fmt: skip
    assert (tmp_path / "curves.png").stat().st_size > 0
