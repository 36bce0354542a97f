"""
Determinism on CPU: the same seed, world size and ``n_envs`` give bit-identical final weights and optimizer state,
whatever the ``VecEnv`` class and whether rank 0 evaluates periodically; another seed gives other weights.

Each run is a real ``mpirun -np 2 python scripts/train.py`` job into its own log folder. The saved tensors are read
with ``torch.load(weights_only=True)`` straight from the zips and compared byte for byte.
"""

import io
import zipfile

import numpy as np
import pytest
import torch as th
from conftest import REPO_DIR, check_ok, run_mpi

# Several full mpirun trainings: the slow tier.
pytestmark = pytest.mark.slow

TRAIN = str(REPO_DIR / "scripts" / "train.py")

# Rollouts of train_freq 16 x 2 envs x 2 ranks = 64 global steps, 4 gradient steps each from step 256 on: about 110
# updates of a small net. --eval-freq 1024 makes rank 0 evaluate (and save best_model.zip) twice during training.
COMMON_ARGS = ["--env", "CartPole-v1", "-n", "2048", "--n-envs", "2", "--eval-episodes", "2", "--final-eval-episodes", "0",
               "--verbose", "0", "-params", "learning_starts:256", "train_freq:16", "gradient_steps:4",
               "policy_kwargs:dict(net_arch=[16])"]  # fmt: skip


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    """``train(seed, vec_env, eval_freq)``: the final model file of that run, each configuration trained once."""
    done = {}

    def run(seed=3, vec_env="subproc", eval_freq=1024, repeat=0):
        key = (seed, vec_env, eval_freq, repeat)
        if key not in done:
            folder = tmp_path_factory.mktemp(f"seed{seed}_{vec_env}_eval{eval_freq}_{repeat}")
            args = [TRAIN, *COMMON_ARGS, "--seed", str(seed), "--vec-env", vec_env, "--eval-freq", str(eval_freq),
                    "-f", str(folder)]  # fmt: skip
            check_ok(run_mpi(args, timeout=240))
            done[key] = folder / "parallel_dqn" / "CartPole-v1_1" / "CartPole-v1.zip"
        return done[key]

    return run


def saved_state(path):
    """The policy's state_dict and the optimizer's state, as saved in the model zip."""
    with zipfile.ZipFile(path) as archive:
        return {
            name: th.load(io.BytesIO(archive.read(f"{name}.pth")), map_location="cpu", weights_only=True)
            for name in ("policy", "policy.optimizer")
        }


def differences(a, b, where=""):
    """Where two nested structures of tensors, containers and numbers differ; tensors compared bit for bit."""
    if isinstance(a, th.Tensor) and isinstance(b, th.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}/{key}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{where} length"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if type(a) is type(b) and a == b else [where]


def test_same_seed_gives_bit_identical_weights_and_adam_state(train):
    first, second = saved_state(train()), saved_state(train(repeat=1))
    # the runs trained: Adam took its steps and holds moment estimates for every parameter
    adam = first["policy.optimizer"]["state"]
    assert len(adam) == 4 and all(s["step"].item() > 50 and "exp_avg_sq" in s for s in adam.values())
    assert differences(first, second) == []


def test_other_seed_gives_other_weights(train):
    reference, other = saved_state(train()), saved_state(train(seed=4))
    assert differences(reference["policy"], other["policy"]) != []
    # the comparison can tell: the architecture, keys and Adam step counts are the same, only the values differ
    assert reference["policy"].keys() == other["policy"].keys()
    assert [s["step"] for s in reference["policy.optimizer"]["state"].values()] == [
        s["step"] for s in other["policy.optimizer"]["state"].values()
    ]


def test_vec_env_class_does_not_matter(train):
    # The envs of a rank step in lockstep (step() waits for every worker), so worker processes and their timing
    # cannot change which transitions are collected.
    assert differences(saved_state(train()), saved_state(train(vec_env="dummy"))) == []


def test_periodic_evaluation_does_not_perturb_training(train):
    # Rank 0 evaluates greedily (no draw from the exploration RNG) on an env of its own, seeded apart.
    evaluated, not_evaluated = train(), train(eval_freq=0)
    assert np.load(evaluated.parent / "evaluations.npz")["timesteps"].tolist() == [1024, 2048]
    assert not (not_evaluated.parent / "evaluations.npz").exists()
    assert differences(saved_state(evaluated), saved_state(not_evaluated)) == []
