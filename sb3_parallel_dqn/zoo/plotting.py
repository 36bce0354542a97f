"""
What ``python -m sb3_parallel_dqn.plot`` does: learning curves of runs (return vs global timesteps and vs wall-clock
time) from their monitor files and ``evaluations.npz``, to a PNG.

Training curve: the episodes of every ``*.monitor.csv`` of a run (one file per env of each rank, each with its own
``t_start``) merged in order of their absolute end time. The global timestep of an episode is the cumulative sum of
the lengths of the episodes that ended before it (as rl-baselines3-zoo's plots count, so steps of episodes still
running are not counted yet), its wall-clock time is its end time minus the earliest ``t_start`` of the run. The
return is a moving average over ``--smooth`` episodes.

Evaluation curve (when the run has ``evaluations.npz`` from ``EvalCallback``): mean +/- std of the evaluation returns
at each evaluation's global timestep. The npz holds no time, so on the wall-clock axis each evaluation is placed by
linear interpolation of its timestep on the run's (timesteps, wall-clock) training curve, anchored at (0, 0).
"""

from __future__ import annotations

__all__ = ["DEFAULT_ALGO", "DEFAULT_OUTPUT", "RunError", "plot", "plot_runs"]

import csv
import json
from pathlib import Path
from typing import Literal, NamedTuple

import matplotlib

# No display here, on CI or on a cluster node: always draw off-screen. Must be chosen before pyplot is imported.
matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from sb3_parallel_dqn.env_names import env_file_name
from sb3_parallel_dqn.zoo import ALGO as DEFAULT_ALGO

DEFAULT_OUTPUT = "learning_curves.png"
EVALUATIONS_FILE = "evaluations.npz"
# The pattern of SB3's ``get_monitor_files``: importing SB3 (and so torch) only to list csv files would triple the
# start-up time of this script.
MONITOR_PATTERN = "*monitor.csv"


class RunError(Exception):
    """A run folder that cannot be found or holds nothing to plot."""


class TrainingCurve(NamedTuple):
    """One point per training episode, in order of episode end time."""

    timesteps: np.ndarray  # global env steps at the end of the episode
    seconds: np.ndarray  # wall-clock seconds since the run's earliest t_start
    returns: np.ndarray


class EvalCurve(NamedTuple):
    """One point per periodic evaluation."""

    timesteps: np.ndarray
    mean: np.ndarray
    std: np.ndarray


class MonitorLog(NamedTuple):
    """The episodes of one monitor file, on that file's own clock."""

    t_start: float
    returns: np.ndarray
    lengths: np.ndarray
    end_times: np.ndarray  # seconds since t_start (the ``t`` column)


def get_monitor_files(run_dir: str | Path) -> list[Path]:
    """The monitor files of a run (``0.monitor.csv``, ``1.0.monitor.csv``...), sorted by name."""
    return sorted(Path(run_dir).glob(MONITOR_PATTERN))


def read_monitor_file(path: str | Path) -> MonitorLog:
    """
    Read one SB3 ``Monitor`` file: a ``#{"t_start": ...}`` line, then csv columns ``r,l,t`` (and any info keywords).

    SB3's ``load_results`` needs pandas, which this package does not depend on, hence this reader. A file that a
    running job is writing may end in a half-written row: it is left out.
    """
    text = Path(path).read_text()
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]
    if not lines or not lines[0].startswith("#"):
        raise RunError(f"{path} is not a monitor file: no '#{{\"t_start\": ...}}' header line")
    try:
        t_start = float(json.loads(lines[0][1:])["t_start"])
        rows = list(csv.DictReader(lines[1:]))
        returns = np.array([float(row["r"]) for row in rows], dtype=np.float64)
        lengths = np.array([int(row["l"]) for row in rows], dtype=np.int64)
        end_times = np.array([float(row["t"]) for row in rows], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as error:
        raise RunError(f"{path} is not a valid monitor file: {error!r}") from error
    return MonitorLog(t_start, returns, lengths, end_times)


def load_training_curve(run_dir: str | Path) -> TrainingCurve:
    """
    The training episodes of all the monitor files of a run, merged in order of their absolute end time.

    :param run_dir: the run folder
    :return: global timesteps, wall-clock seconds and return at the end of each episode (empty arrays when there is
        no monitor file or no finished episode)
    """
    # Sorted names and a stable sort: episodes that end at the same instant always come in the same order.
    logs = [read_monitor_file(path) for path in get_monitor_files(run_dir)]
    if not logs:
        empty = np.array([], dtype=np.float64)
        return TrainingCurve(np.array([], dtype=np.int64), empty, empty)
    # Each rank's envs start their own clock (t_start): compare episodes on the absolute time t_start + t.
    end_times = np.concatenate([log.t_start + log.end_times for log in logs])
    order = np.argsort(end_times, kind="stable")
    lengths = np.concatenate([log.lengths for log in logs])[order]
    returns = np.concatenate([log.returns for log in logs])[order]
    seconds = end_times[order] - min(log.t_start for log in logs)
    return TrainingCurve(np.cumsum(lengths), seconds, returns)


def load_eval_curve(run_dir: str | Path) -> EvalCurve | None:
    """
    Mean and std of the returns of each periodic evaluation (``evaluations.npz`` written by ``EvalCallback``).

    :param run_dir: the run folder
    :return: the curve, or None when the run has no ``evaluations.npz``
    """
    path = Path(run_dir) / EVALUATIONS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            timesteps = np.asarray(data["timesteps"])
            results = np.asarray(data["results"], dtype=np.float64)
    except (OSError, KeyError, ValueError) as error:
        raise RunError(f"{path} is not an EvalCallback log: {error!r}") from error
    if len(timesteps) == 0 or results.size == 0:
        empty = np.array([], dtype=np.float64)
        return EvalCurve(timesteps[:0], empty, empty)
    results = results.reshape(len(timesteps), -1)
    return EvalCurve(timesteps, results.mean(axis=1), results.std(axis=1))


def interpolate_seconds(timesteps: np.ndarray, curve: TrainingCurve) -> np.ndarray:
    """
    Wall-clock seconds at the given global timesteps, interpolated linearly on the training curve.

    The curve is anchored at (0 steps, 0 s). Past its last episode, the run's mean throughput (steps per second) is
    extrapolated, rather than stacking every later evaluation on the last episode's time.

    :param timesteps: global timesteps, e.g. those of the evaluations
    :param curve: the run's training curve
    :return: seconds since the run's earliest t_start; NaN everywhere when the curve has no episode
    """
    timesteps = np.asarray(timesteps, dtype=np.float64)
    if len(curve.timesteps) == 0:
        return np.full(timesteps.shape, np.nan)
    steps = np.concatenate([[0.0], curve.timesteps.astype(np.float64)])
    seconds = np.concatenate([[0.0], curve.seconds])
    interpolated = np.interp(timesteps, steps, seconds)
    beyond = timesteps > steps[-1]
    interpolated[beyond] = seconds[-1] + (timesteps[beyond] - steps[-1]) * seconds[-1] / steps[-1]
    return interpolated


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """
    Mean over the ``window`` values ending at each position, from the first full window on ("valid" convolution, as
    rl-baselines3-zoo's plots do): the result has ``len(values) - window + 1`` values.
    """
    if window <= 1:
        return np.asarray(values, dtype=np.float64)
    return np.convolve(values, np.ones(window) / window, mode="valid")


def find_runs(log_folder: str | Path, algo: str, env_id: str, exp_ids: list[int] | None = None) -> list[Path]:
    """
    The run folders ``<log_folder>/<algo>/<env_id>_<id>[_<uuid>]`` (zoo layout), by increasing id.

    :param exp_ids: the ids to keep (0: the latest, as in the zoo); None for all
    :raise RunError: when there is no run, or a requested id does not exist
    """
    algo_dir, name = Path(log_folder) / algo, env_file_name(env_id)
    runs: dict[int, list[Path]] = {}
    for path in sorted(algo_dir.glob(f"{name}_*")):
        # "<env>_<id>" or, with the zoo's --uuid, "<env>_<id>_<uuid>": the id is the first field after the env id.
        head = path.name[len(name) + 1 :].split("_", 1)[0]
        if head.isdigit() and path.is_dir():
            runs.setdefault(int(head), []).append(path)
    if not runs:
        raise RunError(f"no run folder {algo_dir / name}_<id>")
    wanted = sorted(runs) if exp_ids is None else [max(runs) if exp_id == 0 else exp_id for exp_id in exp_ids]
    missing = [exp_id for exp_id in wanted if exp_id not in runs]
    if missing:
        raise RunError(f"no run folder {algo_dir / name}_{missing[0]} (ids found: {sorted(runs)})")
    return [path for exp_id in wanted for path in runs[exp_id]]


def default_labels(run_dirs: list[Path]) -> list[str]:
    """Run folder names, prefixed by their parent folder (the algo) where two runs would share a name."""
    names = [path.name for path in run_dirs]
    return [f"{path.parent.name}/{path.name}" if names.count(path.name) > 1 else path.name for path in run_dirs]


def plot_runs(
    run_dirs: list[Path],
    labels: list[str],
    output: str | Path,
    smooth: int = 10,
    show_train: bool = True,
    show_eval: bool = True,
) -> None:
    """
    Draw the curves of all runs, one color per run, on two axes (global timesteps, wall-clock seconds) and save
    them as a PNG.

    :param run_dirs: the run folders
    :param labels: one legend label per run
    :param output: the PNG path
    :param smooth: moving-average window over training episodes (1: raw returns)
    :param show_train: draw the training curves
    :param show_eval: draw the evaluation curves
    :raise RunError: when a run has nothing to plot
    """
    fig, (ax_steps, ax_time) = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    try:
        _draw_runs(ax_steps, ax_time, run_dirs, labels, smooth, show_train, show_eval)
        fig.tight_layout()
        fig.savefig(output, dpi=100, format="png")
    finally:
        # pyplot keeps every figure alive until it is closed, also when a run fails halfway.
        plt.close(fig)


def _draw_runs(
    ax_steps: Axes,
    ax_time: Axes,
    run_dirs: list[Path],
    labels: list[str],
    smooth: int,
    show_train: bool,
    show_eval: bool,
) -> None:
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    run_handles = []
    # The eval curve is dashed next to the training one, but is the only line (solid) with --eval-only.
    eval_style: Literal["--", "-"] = "--" if show_train else "-"
    for index, (run_dir, label) in enumerate(zip(run_dirs, labels, strict=True)):
        color = colors[index % len(colors)]
        train = load_training_curve(run_dir)
        evals = load_eval_curve(run_dir)
        has_train = show_train and len(train.returns) > 0
        has_eval = show_eval and evals is not None and len(evals.timesteps) > 0
        if not (has_train or has_eval):
            wanted = [name for name, shown in (("finished episode", show_train), ("evaluation", show_eval)) if shown]
            raise RunError(f"{run_dir}: no {' or '.join(wanted)} to plot")
        if has_train:
            # Never wider than the run, so that a short run still shows one (fully averaged) point.
            window = max(1, min(smooth, len(train.returns)))
            returns = moving_average(train.returns, window)
            # Each average is drawn at the last episode of its window: no look-ahead.
            ax_steps.plot(train.timesteps[window - 1 :], returns, color=color, linewidth=1.5)
            ax_time.plot(train.seconds[window - 1 :], returns, color=color, linewidth=1.5)
        if has_eval:
            assert evals is not None
            seconds = interpolate_seconds(evals.timesteps, train)
            for ax, x in ((ax_steps, evals.timesteps), (ax_time, seconds)):
                ax.plot(x, evals.mean, eval_style, color=color, marker="o", markersize=3, linewidth=1.2)
                ax.fill_between(x, evals.mean - evals.std, evals.mean + evals.std, color=color, alpha=0.15, linewidth=0)
        run_handles.append(Line2D([], [], color=color, linewidth=2, label=label))

    ax_steps.set_xlabel("global timesteps")
    ax_steps.set_ylabel("episode return")
    ax_time.set_xlabel("wall-clock time (s)")
    title = f"training (moving average over {smooth} episodes)" if smooth > 1 else "training (raw episode returns)"
    style_handles = []
    if show_train:
        style_handles.append(Line2D([], [], color="black", linewidth=1.5, label=title))
    if show_eval:
        # The npz holds no time: on the right, evaluations sit at their timestep's time on the training curve.
        eval_label = "evaluation mean \u00b1 std (time interpolated)"
        style_handles.append(Line2D([], [], color="black", linestyle=eval_style, marker="o", markersize=3, label=eval_label))
    ax_steps.legend(handles=run_handles, loc="best", fontsize="small")
    ax_time.legend(handles=style_handles, loc="best", fontsize="small")
    for ax in (ax_steps, ax_time):
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
    ax_steps.set_title("return vs global timesteps")
    ax_time.set_title("return vs wall-clock time")


def plot(
    runs: list[str],
    log_folder: str,
    algo: str,
    env_id: str | None,
    exp_ids: list[int] | None,
    labels: list[str] | None,
    output: str,
    smooth: int,
    show_train: bool = True,
    show_eval: bool = True,
) -> tuple[Path, int]:
    """
    Check the inputs and draw the learning curves of the run folders ``runs`` and, with ``env_id``, of the runs
    ``<log_folder>/<algo>/<env_id>_<id>`` (``exp_ids``; default: all) to the PNG ``output``.

    :return: the PNG written and the number of runs in it
    :raises RunError: for an input that cannot be plotted, with a message for the user
    """
    run_dirs = [Path(run) for run in runs]
    for run_dir in run_dirs:
        if not run_dir.is_dir():
            raise RunError(f"no run folder {run_dir}")
    if exp_ids is not None and env_id is None:
        raise RunError("--exp-id selects runs of --env: pass --env too")
    if env_id is not None:
        run_dirs += find_runs(log_folder, algo, env_id, exp_ids)
    if not run_dirs:
        raise RunError("no run folder: pass run folders, or --env (with -f/--log-folder)")
    for run_dir in run_dirs:
        if not get_monitor_files(run_dir) and not (run_dir / EVALUATIONS_FILE).is_file():
            raise RunError(f"{run_dir} has no *.monitor.csv and no {EVALUATIONS_FILE}")
    labels = labels if labels is not None else default_labels(run_dirs)
    if len(labels) != len(run_dirs):
        raise RunError(f"{len(labels)} label(s) for {len(run_dirs)} run(s)")
    if smooth < 1:
        raise RunError(f"--smooth must be >= 1, not {smooth}")
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_runs(run_dirs, labels, path, smooth, show_train=show_train, show_eval=show_eval)
    return path, len(run_dirs)
