"""The rule for other world sizes (sb3_parallel_dqn.scaling) and its option in the zoo layer."""

import json
import math
import pickle

import cloudpickle
import pytest
from stable_baselines3.common.utils import LinearSchedule

from sb3_parallel_dqn.scaling import SCALING_MODES, scale_to_world
from sb3_parallel_dqn.validation import ConfigError
from sb3_parallel_dqn.zoo.envs import split_hyperparams
from sb3_parallel_dqn.zoo.hyperparams import load_hyperparams

CARTPOLE = {"learning_rate": 2.3e-3, "batch_size": 64, "train_freq": 128, "gradient_steps": 64, "n_steps": 5}


def updates_per_global_step(hp, world_size):
    freq = hp["train_freq"] if isinstance(hp["train_freq"], int) else hp["train_freq"][0]
    return hp["gradient_steps"] / (freq * world_size)


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_none_keeps_the_values(world_size):
    assert scale_to_world(CARTPOLE, "none", world_size, tuned_world_size=2) == CARTPOLE


@pytest.mark.parametrize("world_size", [1, 2, 4, 8, 16])
def test_strong_keeps_the_tuned_global_batch_and_updates_per_step(world_size):
    scaled = scale_to_world(CARTPOLE, "strong", world_size, tuned_world_size=2)
    assert scaled["batch_size"] * world_size == CARTPOLE["batch_size"] * 2
    assert updates_per_global_step(scaled, world_size) == updates_per_global_step(CARTPOLE, 2)
    assert scaled["learning_rate"] == CARTPOLE["learning_rate"] and scaled["n_steps"] == 5
    # train_freq shrinks where it divides, so updates stay as finely interleaved with collection as on 2 ranks
    assert scaled["gradient_steps"] == 64 and scaled["train_freq"] == 256 // world_size


def test_strong_is_the_issue_15_atari_layout():
    """SB3's values (1 process) on 2 ranks: batch 16 and train_freq 2 per rank."""
    scaled = scale_to_world({"batch_size": 32, "train_freq": 4, "gradient_steps": 1}, "strong", 2)
    assert (scaled["batch_size"], scaled["train_freq"], scaled["gradient_steps"]) == (16, 2, 1)
    # where train_freq does not divide, gradient steps grow instead; a tuple keeps its unit
    scaled = scale_to_world({"batch_size": 32, "train_freq": (3, "step"), "gradient_steps": 1}, "strong", 2)
    assert scaled["train_freq"] == (3, "step") and scaled["gradient_steps"] == 2


def test_strong_refuses_a_batch_it_cannot_split():
    with pytest.raises(ValueError, match="does not divide"):
        scale_to_world({"batch_size": 30}, "strong", 4)


@pytest.mark.parametrize("world_size", [1, 4, 8])
def test_sqrt_scales_learning_rate_and_updates_by_the_root(world_size):
    kappa = world_size / 2
    scaled = scale_to_world(CARTPOLE, "sqrt", world_size, tuned_world_size=2)
    assert scaled["learning_rate"] == pytest.approx(CARTPOLE["learning_rate"] * math.sqrt(kappa))
    assert scaled["gradient_steps"] == round(64 * math.sqrt(kappa)) and scaled["batch_size"] == 64
    ratio = updates_per_global_step(scaled, world_size) / updates_per_global_step(CARTPOLE, 2)
    assert ratio == pytest.approx(1 / math.sqrt(kappa), rel=0.02)


def test_a_scaled_schedule_pickles_and_scales_every_value():
    scaled = scale_to_world({"learning_rate": LinearSchedule(1e-3, 0.0, 1.0)}, "sqrt", 4)["learning_rate"]
    assert scaled(1.0) == pytest.approx(2e-3) and scaled(0.5) == pytest.approx(1e-3)
    # cloudpickle (SB3's save) writes the closure by value
    assert pickle.loads(cloudpickle.dumps(scaled))(0.5) == pytest.approx(1e-3)


def test_bad_modes_and_sizes_are_refused():
    with pytest.raises(ValueError, match="scaling must be one of"):
        scale_to_world(CARTPOLE, "linear", 4)
    with pytest.raises(ValueError, match="gradient_steps >= 1"):
        scale_to_world({**CARTPOLE, "gradient_steps": -1}, "sqrt", 4)
    with pytest.raises(ValueError, match="world sizes"):
        scale_to_world(CARTPOLE, "sqrt", 0)
    assert SCALING_MODES == ("none", "sqrt", "strong")


def test_the_zoo_option_applies_the_rule_for_the_launchers_world_size(monkeypatch):
    from sb3_parallel_dqn.distributed import comm

    hyperparams, _ = load_hyperparams("CartPole-v1", overrides={"scaling": "sqrt"})
    assert hyperparams["tuned_world_size"] == 2  # the shipped entry says what it was tuned for
    monkeypatch.setattr(comm, "launcher_world_size", lambda: 8)
    model_kwargs, _ = split_hyperparams(hyperparams)
    assert "scaling" not in model_kwargs and "tuned_world_size" not in model_kwargs
    assert model_kwargs["gradient_steps"] == 128 and model_kwargs["learning_rate"] == pytest.approx(4.6e-3)
    monkeypatch.setattr(comm, "launcher_world_size", lambda: 2)
    assert split_hyperparams(hyperparams)[0]["gradient_steps"] == 64  # the tuned world size: unchanged
    with pytest.raises(ConfigError, match="expected one of"):
        load_hyperparams("CartPole-v1", overrides={"scaling": "linear"})
    monkeypatch.setattr(comm, "launcher_world_size", lambda: 3)
    with pytest.raises(ConfigError, match="does not divide"):
        split_hyperparams(load_hyperparams("CartPole-v1", overrides={"scaling": "strong"})[0])


def write_runs(folder, threshold, runs_by_config):
    folder.mkdir()
    results = {config: [{"curve": curve, "n_updates": updates, "num_timesteps": 10_000, "final_mean_return": 1.0}
                        for curve, updates in runs] for config, runs in runs_by_config.items()}  # fmt: skip
    (folder / "results.json").write_text(json.dumps({"threshold": threshold, "results": results}))


def test_scaling_report_steps_to_p1_and_projection(tmp_path):
    from sb3_parallel_dqn.bench.scaling_report import projected_seconds, scaling_rows, scaling_table, steps_to_p1

    # P1: the second of the first two evaluations in a row at the threshold
    assert steps_to_p1([(1000, 1.0, 500.0), (2000, 2.0, 100.0), (3000, 3.0, 480.0), (4000, 4.0, 475.0)], 475) == 4000
    assert steps_to_p1([(1000, 1.0, 500.0), (2000, 2.0, 100.0)], 475) is None
    solved = [(1000, 0.0, 480.0), (2000, 0.0, 490.0)]
    never = [(1000, 0.0, 10.0), (2000, 0.0, 20.0)]
    write_runs(tmp_path / "none", 475, {"pdqn-2": [(solved, 2500)] * 3, "pdqn-8": [(never, 625)] * 2 + [(solved, 625)]})
    write_runs(tmp_path / "sqrt", 475, {"pdqn-8": [(solved, 1250)] * 3, "sb3": [(solved, 10_000)]})
    costs = {"t_step": 1e-4, "t_update": 5e-4, "t_sync2": 1e-4}
    rows = scaling_rows([("none", tmp_path / "none"), ("sqrt", tmp_path / "sqrt")], costs)
    assert [(row["mode"], row["world_size"]) for row in rows] == [("none", 2), ("none", 8), ("sqrt", 8)]
    assert rows[0]["median_steps"] == 2000 and rows[1]["median_steps"] == math.inf and rows[1]["solved"] == 1
    # T = S / W * t_step + S * updates per step * (t_update + t_sync(2) * log2 W)
    assert rows[2]["projected_s"] == pytest.approx(2000 / 8 * 1e-4 + 2000 * 0.125 * (5e-4 + 3e-4))
    assert projected_seconds(2000, 1, 0.25, costs) == pytest.approx(2000 * 1e-4 + 500 * 5e-4)  # no sync on one rank
    table = scaling_table(rows, 475)
    assert "| none | 8 | 1/3 | never |" in table and "| sqrt | 8 | 3/3 | 2,000 |" in table
