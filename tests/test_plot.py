"""The learning-curve plots (scripts/plot.py, python -m sb3_parallel_dqn.plot) on run folders of real SB3 Monitor files."""

import itertools
import json
import time
from pathlib import Path

import gymnasium as gym
import matplotlib.image
import numpy as np
import pytest
from conftest import REPO_DIR, check_ok, run_python
from stable_baselines3.common.monitor import Monitor, get_monitor_files

from sb3_parallel_dqn.plot import main as plot_main
from sb3_parallel_dqn.zoo import plotting as plot

PLOT = REPO_DIR / "scripts" / "plot.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(run_dir: Path, n_rounds: int = 4, seed: int = 0, eval_timesteps: tuple[int, ...] | None = None) -> list[dict]:
    """
    A run folder as two MPI ranks write it: monitor files ``1.0``, ``0.0`` and ``0.1``, each with its own t_start
    (rank 1 starts first), whose random CartPole episodes interleave in time. Returns the episodes as the Monitor
    wrapper reported them in ``info["episode"]``, with the absolute end time and the file's t_start.
    """
    run_dir.mkdir(parents=True)
    monitors = []
    for name in ("1.0", "0.0", "0.1"):
        monitors.append(Monitor(gym.make("CartPole-v1"), filename=str(run_dir / name)))
        time.sleep(0.01)  # distinct t_starts
    episodes = []
    rng = np.random.default_rng(seed)
    for round_ in range(n_rounds):
        # A different order each round, so that neither file order nor round-robin order is the time order.
        for index in rng.permutation(len(monitors)):
            env = monitors[index]
            env.reset(seed=seed + 100 * round_ + int(index))
            done = False
            while not done:
                _, _, terminated, truncated, info = env.step(env.action_space.sample())
                done = terminated or truncated
            episode = info["episode"]
            episodes.append({"r": episode["r"], "l": episode["l"], "end": env.t_start + episode["t"], "t_start": env.t_start})
            time.sleep(0.002)
    for env in monitors:
        env.close()
    if eval_timesteps is not None:
        # As EvalCallback saves them: one row of episode returns (and lengths) per evaluation.
        results = rng.uniform(0, 100, size=(len(eval_timesteps), 3))
        lengths = rng.integers(10, 500, size=results.shape)
        np.savez(run_dir / "evaluations.npz", timesteps=np.array(eval_timesteps), results=results, ep_lengths=lengths)
    return episodes


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("logs") / "parallel_dqn" / "CartPole-v1_1"
    episodes = make_run(run_dir, eval_timesteps=(10, 60, 150, 100_000))
    return run_dir, episodes


@pytest.fixture(scope="module")
def log_folder(tmp_path_factory):
    """A zoo log folder: two ParallelDQN runs (one without evaluations) and one SB3 DQN run of CartPole-v1."""
    logs = tmp_path_factory.mktemp("zoo_logs")
    make_run(logs / "parallel_dqn" / "CartPole-v1_1", n_rounds=2, seed=1, eval_timesteps=(20, 80))
    make_run(logs / "parallel_dqn" / "CartPole-v1_2", n_rounds=2, seed=2)
    make_run(logs / "dqn" / "CartPole-v1_1", n_rounds=2, seed=3, eval_timesteps=(20, 80))
    (logs / "parallel_dqn" / "CartPole-v1_2" / "CartPole-v1").mkdir()  # the config sub-folder is not a run
    (logs / "parallel_dqn" / "CartPole-v1_x").mkdir()  # no id: not a run
    return logs


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 300 <= height < width <= 3000 and image.std() > 0  # two panels side by side, not a blank canvas


def test_monitor_files_are_those_sb3_finds(run):
    run_dir, _ = run
    assert [str(path) for path in plot.get_monitor_files(run_dir)] == sorted(get_monitor_files(str(run_dir)))
    assert [path.name for path in plot.get_monitor_files(run_dir)] == ["0.0.monitor.csv", "0.1.monitor.csv", "1.0.monitor.csv"]


def test_training_curve_merges_ranks_in_end_time_order(run):
    run_dir, episodes = run
    timesteps, seconds, returns = plot.load_training_curve(run_dir)
    # Brute force from what the Monitor wrappers reported while playing
    ordered = sorted(episodes, key=lambda episode: episode["end"])
    # the files interleave: read one after the other, they would not be in time order
    assert sum(a["t_start"] != b["t_start"] for a, b in itertools.pairwise(ordered)) > len(plot.get_monitor_files(run_dir))
    first_start = min(episode["t_start"] for episode in episodes)
    expected_timesteps, total = [], 0
    for episode in ordered:
        total += episode["l"]
        expected_timesteps.append(total)
    assert timesteps.tolist() == expected_timesteps
    np.testing.assert_allclose(returns, [episode["r"] for episode in ordered])
    np.testing.assert_allclose(seconds, [episode["end"] - first_start for episode in ordered], atol=1e-5)
    # counted from rank 1's t_start, the earliest: the first episode ends after all three monitors were made 10 ms apart
    assert np.all(np.diff(seconds) > 0) and seconds[0] > 0.02


def test_half_written_row_is_left_out(tmp_path):
    header = json.dumps({"t_start": 1000.0, "env_id": "CartPole-v1"})
    (tmp_path / "0.monitor.csv").write_text(f"#{header}\nr,l,t\n10.0,10,0.5\n20.0,20,1.5\n3")
    (tmp_path / "1.monitor.csv").write_text(f"#{header}\nr,l,t\n")  # no episode finished yet
    timesteps, seconds, returns = plot.load_training_curve(tmp_path)
    assert timesteps.tolist() == [10, 30] and seconds.tolist() == [0.5, 1.5] and returns.tolist() == [10.0, 20.0]


def test_eval_curve_and_its_wall_clock_interpolation(run):
    run_dir, _ = run
    evals = plot.load_eval_curve(run_dir)
    with np.load(run_dir / "evaluations.npz") as data:
        assert evals.timesteps.tolist() == data["timesteps"].tolist()
        np.testing.assert_allclose(evals.mean, data["results"].mean(axis=1))
        np.testing.assert_allclose(evals.std, data["results"].std(axis=1))
    curve = plot.load_training_curve(run_dir)
    seconds = plot.interpolate_seconds(evals.timesteps, curve)
    # Brute force: the segment of the (timesteps, seconds) curve, starting at (0, 0), that holds each timestep
    steps, times = [0, *curve.timesteps.tolist()], [0.0, *curve.seconds.tolist()]
    for timestep, second in zip(evals.timesteps, seconds, strict=True):
        if timestep > steps[-1]:  # past the last episode: the run's mean throughput
            assert second == pytest.approx(times[-1] * timestep / steps[-1])
            continue
        i = next(i for i in range(1, len(steps)) if steps[i - 1] <= timestep <= steps[i])
        fraction = (timestep - steps[i - 1]) / (steps[i] - steps[i - 1])
        assert second == pytest.approx(times[i - 1] + fraction * (times[i] - times[i - 1]))
    assert evals.timesteps[-1] > steps[-1] and np.all(np.diff(seconds) > 0)
    # Exactly at an episode end: that episode's time
    assert plot.interpolate_seconds(curve.timesteps[2:3], curve)[0] == pytest.approx(curve.seconds[2])


def test_no_evaluations_and_no_monitor_files(tmp_path):
    assert plot.load_eval_curve(tmp_path) is None
    curve = plot.load_training_curve(tmp_path)
    assert len(curve.timesteps) == len(curve.seconds) == len(curve.returns) == 0
    assert np.isnan(plot.interpolate_seconds(np.array([5, 10]), curve)).all()


def test_moving_average():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert plot.moving_average(values, 1).tolist() == values.tolist()
    np.testing.assert_allclose(plot.moving_average(values, 2), [1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(plot.moving_average(values, 5), [3.0])


def test_main_writes_png_for_run_folders(run, tmp_path, capsys):
    run_dir, _ = run
    output = tmp_path / "sub" / "curves.png"
    assert plot_main([str(run_dir), "-o", str(output), "--smooth", "3"]) == 0
    check_png(output)
    assert str(output.resolve()) in capsys.readouterr().out
    for flag in ("--eval-only", "--train-only"):
        assert plot_main([str(run_dir), "-o", str(tmp_path / f"{flag}.png"), flag, "--labels", "mine"]) == 0
        check_png(tmp_path / f"{flag}.png")


def test_find_runs_zoo_layout(log_folder):
    runs = plot.find_runs(log_folder, "parallel_dqn", "CartPole-v1")
    assert [path.name for path in runs] == ["CartPole-v1_1", "CartPole-v1_2"]
    assert plot.find_runs(log_folder, "parallel_dqn", "CartPole-v1", [0]) == runs[1:]  # 0: the latest, as in the zoo
    assert plot.find_runs(log_folder, "dqn", "CartPole-v1", [1]) == [log_folder / "dqn" / "CartPole-v1_1"]
    both = [runs[0], log_folder / "dqn" / "CartPole-v1_1"]
    assert plot.default_labels(both) == ["parallel_dqn/CartPole-v1_1", "dqn/CartPole-v1_1"]
    assert plot.default_labels(runs) == ["CartPole-v1_1", "CartPole-v1_2"]


def test_find_runs_with_uuid(tmp_path):
    for name in ("CartPole-v1_2_1a2b", "CartPole-v1_10", "CartPole-v1_2_0f0f", "CartPole-v1_3.png"):
        (tmp_path / "parallel_dqn" / name).mkdir(parents=True)
    runs = plot.find_runs(tmp_path, "parallel_dqn", "CartPole-v1")
    assert [path.name for path in runs] == ["CartPole-v1_2_0f0f", "CartPole-v1_2_1a2b", "CartPole-v1_10"]
    assert [path.name for path in plot.find_runs(tmp_path, "parallel_dqn", "CartPole-v1", [0])] == ["CartPole-v1_10"]


def test_main_writes_png_for_log_folder(log_folder, tmp_path):
    output = tmp_path / "zoo.png"
    # all our runs (one without evaluations.npz), next to an SB3 DQN run given as a folder
    dqn_run = str(log_folder / "dqn" / "CartPole-v1_1")
    assert plot_main(["-f", str(log_folder), "--env", "CartPole-v1", dqn_run, "-o", str(output)]) == 0
    check_png(output)
    assert plot_main(["-f", str(log_folder), "--algo", "dqn", "--env", "CartPole-v1", "--exp-id", "1", "-o", str(output)]) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no run folder"),
        (["{tmp}/missing"], "no run folder"),
        (["{tmp}/empty"], "has no *.monitor.csv and no evaluations.npz"),
        (["-f", "{logs}", "--env", "LunarLander-v3"], "no run folder"),
        (["-f", "{logs}", "--env", "CartPole-v1", "--exp-id", "7"], "CartPole-v1_7"),
        (["-f", "{logs}", "--env", "CartPole-v1", "--labels", "a"], "1 label(s) for 2 run(s)"),
        (["-f", "{logs}", "--env", "CartPole-v1", "--eval-only"], "no evaluation to plot"),
        (["-f", "{logs}", "--env", "CartPole-v1", "--smooth", "0"], "--smooth"),
        (["{tmp}/empty", "--exp-id", "1"], "pass --env too"),
    ],
)
def test_errors_exit_2_with_one_line(args, message, log_folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "CartPole-v1").mkdir()
    args = [arg.format(tmp=tmp_path, logs=log_folder) for arg in args]
    output = tmp_path / "out.png"
    assert plot_main([*args, "-o", str(output)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr, stderr
    assert not output.exists()


def test_cli_end_to_end(run, tmp_path):
    run_dir, _ = run
    result = check_ok(run_python([str(PLOT), str(run_dir), "--smooth", "2"], cwd=tmp_path, timeout=60))
    output = (tmp_path / plot.DEFAULT_OUTPUT).resolve()  # in the current directory by default
    check_png(output)
    assert str(output) in result.stdout
    failed = run_python([str(PLOT), str(tmp_path / "missing")], cwd=tmp_path, timeout=60)
    assert failed.returncode == 2 and failed.stderr.startswith("error: no run folder")
