"""
What ``python -m sb3_parallel_dqn.benchmark`` does (see there for the report): the worker (one training run in this
process; rank 0 of an ``mpirun`` job writes the result) and the driver (interleave the configurations over seeds,
run each as a fresh process, summarise, plot).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sb3_parallel_dqn.engine import STEP_PARTS as TIME_SPLIT_PARTS
from sb3_parallel_dqn.updates import AveragedUpdate

THRESHOLDS = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "LunarLander-v3": 200.0, "MountainCar-v0": -110.0}
# --threshold sb3: the median over SB3's seeds of its final return (the return SB3 reaches with the whole budget).
SB3_THRESHOLD = "sb3"
# Defaults of the options below that --quick replaces; an option given on the command line wins over both.
DEFAULTS: dict[str, Any] = {"seeds": [0, 1, 2, 3, 4], "n_timesteps": None, "eval_freq": 2_500, "eval_episodes": 10,
                            "final_episodes": 20, "profile_steps": 200}  # fmt: skip
QUICK: dict[str, Any] = {"seeds": [0], "n_timesteps": 6_000, "eval_freq": 2_000, "eval_episodes": 3,
                         "final_episodes": 5, "profile_steps": 100}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Worker: one training run in this process (rank 0 of an mpirun job writes the result).
# ---------------------------------------------------------------------------------------------------------------------


def resolve_conf_file(conf_file: str | None) -> str | None:
    """``"zoo"`` names rl-baselines3-zoo's own ``hyperparams/dqn.yml`` (installed with the ``zoo`` extra)."""
    if conf_file != "zoo":
        return conf_file
    try:
        import rl_zoo3
    except ImportError:
        raise SystemExit("--conf-file zoo needs rl_zoo3: pip install 'sb3_parallel_dqn[zoo]'") from None
    return str(Path(rl_zoo3.__file__).parent / "hyperparams" / "dqn.yml")


def profile_gradient_steps(model: Any, n_steps: int) -> dict[str, float | None]:
    """
    Mean microseconds per part of a gradient step, timed on ``n_steps`` steps of the trained model: ``train()``
    itself for ParallelDQN (its engine's :class:`~sb3_parallel_dqn.engine.PartTimer` marks the parts), a replay of
    SB3's ``DQN.train()`` step for SB3.

    Run after the timed training, so that the timers never touch the timed run. Every rank makes exactly
    ``n_steps`` syncs, so the collectives pair up. ``sync`` is ``None`` on one process (nothing to average).
    """
    from sb3_parallel_dqn import ParallelDQN
    from sb3_parallel_dqn.engine import PartTimer

    if n_steps < 1:
        return {f"{part}_us": None for part in (*TIME_SPLIT_PARTS, "total")} | {"n_steps": 0}
    model.policy.set_training_mode(True)
    if isinstance(model, ParallelDQN):
        timer = model._learner.timer = PartTimer()
        try:
            model.train(gradient_steps=n_steps, batch_size=model.batch_size)
        finally:
            model._learner.timer = None
        totals, synced = timer.seconds, isinstance(model._learner.update, AveragedUpdate)
    else:
        totals, synced = _sb3_step_parts(model, n_steps), False
    split: dict[str, float | None] = {f"{part}_us": 1e6 * totals[part] / n_steps for part in TIME_SPLIT_PARTS}
    if not synced:
        split["sync_us"] = None
    split["total_us"] = 1e6 * sum(totals.values()) / n_steps
    split["n_steps"] = n_steps
    return split


def _sb3_step_parts(model: Any, n_steps: int) -> dict[str, float]:
    """Seconds per part of ``n_steps`` steps of SB3's ``DQN.train()`` (sample, forward + backward, clip + step)."""
    import torch as th
    from torch.nn import functional as F

    totals = dict.fromkeys(TIME_SPLIT_PARTS, 0.0)
    for _ in range(n_steps):
        start = time.perf_counter()
        replay_data = model.replay_buffer.sample(model.batch_size, env=model._vec_normalize_env)
        sampled = time.perf_counter()
        discounts = replay_data.discounts if replay_data.discounts is not None else model.gamma
        with th.no_grad():
            next_q_values, _ = model.q_net_target(replay_data.next_observations).max(dim=1)
            target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values.reshape(-1, 1)
        current_q_values = th.gather(model.q_net(replay_data.observations), dim=1, index=replay_data.actions.long())
        loss = F.smooth_l1_loss(current_q_values, target_q_values)
        loss.item()
        model.policy.optimizer.zero_grad()
        loss.backward()
        backward = time.perf_counter()
        th.nn.utils.clip_grad_norm_(model.policy.parameters(), model.max_grad_norm)
        model.policy.optimizer.step()
        stepped = time.perf_counter()
        totals["sample"] += sampled - start
        totals["forward_backward"] += backward - sampled
        totals["optimizer"] += stepped - backward
    return totals


def peak_rss_mib() -> float:
    """Peak resident set size of this process, in MiB."""
    # ru_maxrss is in KiB on Linux (bytes on macOS, where this would read 1024x too high).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def env_workers_peak_rss_mib(env: Any) -> float | None:
    """
    Largest peak RSS (``VmHWM``) of the env worker processes of a subprocess VecEnv, in MiB; ``None`` without any.

    Read from ``/proc`` while the workers live: ``RUSAGE_CHILDREN`` would also count any short-lived fork of this
    process (e.g. ``ctypes.util.find_library`` running a helper), which starts with the parent's whole footprint.
    """
    while hasattr(env, "venv"):  # VecEnvWrapper, e.g. VecNormalize
        env = env.venv
    peaks = []
    for process in getattr(env, "processes", []):
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
        except OSError:
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM:")]
    return max(peaks) if peaks else None


def resolve_threshold(threshold: str | float | None, env_id: str) -> float:
    """The return that counts as solved: ``--threshold``, else the env's entry of ``THRESHOLDS``, else never.
    ``"sb3"`` is the driver's to resolve once SB3 has run: a worker runs with no threshold then."""
    if threshold is None:
        return THRESHOLDS.get(env_id, float("inf"))
    return float("inf") if threshold == SB3_THRESHOLD else float(threshold)


def seconds_to(curve: list[tuple[int, float, float]], threshold: float) -> tuple[float | None, float | None]:
    """Training seconds to the first evaluation at or above ``threshold``, and to the second of the first two
    evaluations in a row at or above it ("stable"); None where the run never got there."""
    first = next((seconds for _, seconds, ret in curve if ret >= threshold), None)
    stable = stable_solve(curve, threshold)
    return first, None if stable is None else stable[1]


def stable_solve(curve: list[tuple[int, float, float]], threshold: float) -> tuple[int, float] | None:
    """The (global step, training seconds) of the second of the first two evaluations in a row at or above
    ``threshold`` (the P1 rule with 20-episode evaluations); None where the run never got there."""
    return next(
        ((int(b[0]), b[1]) for a, b in itertools.pairwise(curve) if min(a[2], b[2]) >= threshold),
        None,
    )


def run_worker(args: argparse.Namespace) -> None:
    import torch as th
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    from sb3_parallel_dqn import ParallelDQN, compat
    from sb3_parallel_dqn.distributed import comm
    from sb3_parallel_dqn.zoo.callbacks import EVAL_SEED_OFFSET
    from sb3_parallel_dqn.zoo.envs import make_eval_env, make_train_env, split_hyperparams
    from sb3_parallel_dqn.zoo.hyperparams import load_hyperparams, parse_override

    params = args.hyperparams + (args.pdqn_params if args.worker == "pdqn" else args.sb3_params)
    conf_file = resolve_conf_file(args.sb3_conf_file if args.worker == "sb3" and args.sb3_conf_file else args.conf_file)
    hyperparams, _ = load_hyperparams(args.env, conf_file, dict(parse_override(p) for p in params))
    model_kwargs, settings = split_hyperparams(hyperparams)
    n_timesteps = args.n_timesteps or settings.n_timesteps
    assert n_timesteps is not None, "no n_timesteps in the config: pass -n"
    threshold = resolve_threshold(args.threshold, args.env)
    root = comm.is_root()
    # A split Q-network's forward pass is a collective over its model group: every rank evaluates then, on the same
    # seeds (so the same observations), and rank 0 keeps the numbers.
    evaluates = root or int(model_kwargs.get("model_parallel_size", 1)) > 1

    class TimedEval(BaseCallback):
        """Evaluate every eval_freq global steps (rank 0, or every rank of a split model); keep evaluation time off
        the training clock."""

        def __init__(self) -> None:
            super().__init__()
            eval_seed = args.seed + EVAL_SEED_OFFSET  # as train's periodic and final evaluations
            self.eval_env = make_eval_env(args.env, settings, seed=eval_seed) if evaluates else None
            self.next_eval = args.eval_freq
            self.eval_seconds = 0.0
            self.curve: list[tuple[int, float, float]] = []  # (global step, training seconds, mean return)
            self.stop = False  # --stop-at-stable and the curve has its stable solve

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self.next_eval += args.eval_freq
                if self.eval_env is not None:
                    t0 = time.perf_counter()
                    mean_return, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=args.eval_episodes)
                    self.eval_seconds += time.perf_counter() - t0
                    self.curve.append((self.num_timesteps, self.training_seconds(), float(mean_return)))  # type: ignore[arg-type]
                    # --stop-at-stable: rank 0 stops at a stable solve, every rank with it at the end of the rollout.
                    # Checked after an evaluation only: this runs at every env step of the timed training.
                    self.stop = args.stop_at_stable and stable_solve(self.curve, threshold) is not None
            return not self.stop

        def training_seconds(self) -> float:
            return time.perf_counter() - self.start - self.eval_seconds

    th.set_num_threads(args.torch_threads)  # 1: SB3's best setting on small nets (ParallelDQN sets it by itself)
    env = make_train_env(
        args.env, settings, seed=args.seed, model_parallel_size=int(model_kwargs.get("model_parallel_size", 1))
    )
    algo = DQN if args.worker == "sb3" else ParallelDQN
    if algo is ParallelDQN:
        model_kwargs["torch_num_threads"] = args.torch_threads
    model = algo(settings.policy, env, seed=args.seed, device=args.device, **model_kwargs)
    callback = TimedEval()
    model.learn(n_timesteps, callback=callback)
    train_seconds = callback.training_seconds()
    n_updates = compat.n_updates(model)  # before profiling, whose train() calls ParallelDQN counts (SB3's replay does not)
    workers_rss = env_workers_peak_rss_mib(env)
    env.close()

    result: dict[str, Any] = {}
    update = getattr(getattr(model, "_learner", None), "update", None)
    averager = update.averager if isinstance(update, AveragedUpdate) else None
    if averager is not None:
        # Raw Allreduce of a buffer of the same size, same process, right after training (every rank takes part).
        result["raw_allreduce_ms"] = 1e3 * comm.time_allreduce(np.zeros(averager.n_floats, dtype=np.float32))
        result["allreduce_floats"] = averager.n_floats
        result["sync_ms"] = model.logger.name_to_value.get("time/mpi_sync_ms")
    # Rank 0's split; the ranks run in lockstep, so its sync time includes any wait for a slower rank.
    # The profiling steps change the weights: put the trained ones back for the final evaluation below.
    trained_weights = copy.deepcopy(model.policy.state_dict())
    result["time_split"] = profile_gradient_steps(model, args.profile_steps)
    model.policy.load_state_dict(trained_weights)
    # Measured after profiling, so that the peak covers training, periodic evaluation and profiling (every rank).
    rss = comm.allgather(np.array([peak_rss_mib(), np.nan if workers_rss is None else workers_rss]))
    result["peak_rss_mib_per_rank"] = rss[:, 0].round(1).tolist()
    result["peak_rss_mib"] = float(rss[:, 0].max().round(1))
    # None where no rank steps its envs in subprocesses (n_envs 1 or DummyVecEnv)
    result["env_workers_peak_rss_mib"] = None if np.isnan(rss[:, 1]).all() else float(np.nanmax(rss[:, 1]).round(1))
    if not evaluates:
        return
    final_env = make_eval_env(args.env, settings, seed=args.seed + 2 * EVAL_SEED_OFFSET)
    returns, _ = evaluate_policy(model, final_env, n_eval_episodes=args.final_episodes, return_episode_rewards=True)
    if not root:
        return
    first_solve, stable = seconds_to(callback.curve, threshold)
    result.update(
        world_size=comm.world_size(),
        train_seconds=train_seconds,
        env_steps_per_s=model.num_timesteps / train_seconds,
        updates_per_s=n_updates / train_seconds,
        n_updates=n_updates,
        num_timesteps=model.num_timesteps,
        seconds_to_threshold=first_solve,
        seconds_to_stable_threshold=stable,
        final_mean_return=float(np.mean(returns)),
        final_std_return=float(np.std(returns)),
        curve=callback.curve,
    )
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------------------
# Driver: interleave the configurations over seeds, then summarise.
# ---------------------------------------------------------------------------------------------------------------------


def reusable_result(result_file: Path, command: str) -> dict[str, Any] | None:
    """The result in ``result_file`` if an earlier driver made it with exactly ``command`` (``--reuse``)."""
    try:
        result: dict[str, Any] = json.loads(result_file.read_text())
    except (OSError, ValueError):
        return None
    return result if result.get("command") == command else None


def run_job(command: list[str], what: str, timeout: float) -> bool:
    """Run one worker job (a process or an mpirun job); on failure print the end of its output and return False."""
    print(f"[{time.strftime('%H:%M:%S')}] {what} ...", flush=True)
    proc = subprocess.run(command, timeout=timeout, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
    return proc.returncode == 0


def command_for(config: str, seed: int, args: argparse.Namespace, result: Path) -> list[str]:
    """The worker command of a configuration: ``sb3``, ``pdqn-<W>``, ``mp-<W>`` (one model split over W ranks) or
    ``zero-<W>`` (W data-parallel ranks with the sharded optimizer)."""
    kind, _, ranks = config.partition("-")
    worker = [sys.executable, "-m", "sb3_parallel_dqn.benchmark", "--worker", "sb3" if kind == "sb3" else "pdqn"]
    worker += ["--env", args.env, "--seed", str(seed), "--result", str(result), "--eval-freq", str(args.eval_freq)]
    worker += ["--eval-episodes", str(args.eval_episodes), "--final-episodes", str(args.final_episodes)]
    worker += ["--profile-steps", str(args.profile_steps)]
    if args.torch_threads != 1:
        worker += ["--torch-threads", str(args.torch_threads)]
    if args.device != "cpu":
        worker += ["--device", args.device]
    if args.stop_at_stable:
        worker += ["--stop-at-stable"]
    if args.conf_file:
        worker += ["--conf-file", args.conf_file]
    if args.sb3_conf_file:
        worker += ["--sb3-conf-file", args.sb3_conf_file]
    if args.n_timesteps:
        worker += ["-n", str(args.n_timesteps)]
    if args.threshold is not None:
        worker += ["--threshold", str(args.threshold)]
    if args.hyperparams:
        worker += ["-params", *args.hyperparams]
    layout = {"mp": [f"model_parallel_size:{ranks}"], "zero": ["shard_optimizer:True"]}.get(kind, [])
    if kind != "sb3" and (args.pdqn_params or layout):
        worker += ["--pdqn-params", *args.pdqn_params, *layout]
    if args.sb3_params:
        worker += ["--sb3-params", *args.sb3_params]
    if kind != "sb3" and int(ranks) > 1:
        mpirun = str(Path(sys.executable).parent / "mpirun")
        return [mpirun, "-np", ranks, *worker]
    return worker


def summarise(results: dict[str, list[dict[str, Any]]], threshold: float) -> str:
    def median(values: list[float | None], digits: int = 1) -> str:
        present = [v for v in values if v is not None]
        return f"{np.median(present):.{digits}f}" if present else "-"

    def max_or_dash(values: list[float | None]) -> str:
        present = [v for v in values if v is not None]
        return f"{max(present):.0f}" if present else "-"

    ratios = speedups(results)

    def ratio(value: float | None) -> str:
        return f"{value:.2f}x" if value else "-"

    lines = [
        f"| config | s to eval >= {threshold:g} (median) | speed-up to {threshold:g} vs SB3 | solved | stable solve "
        f"| global steps to {threshold:g} (median) | train s (median) | env steps/s | steps/s vs SB3 | updates/s "
        "| final return (mean ± std of seeds) | sync ms | raw Allreduce ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for config, runs in results.items():
        solved = sum(r["seconds_to_threshold"] is not None for r in runs)
        stable = sum(r["seconds_to_stable_threshold"] is not None for r in runs)
        steps_to_threshold = [next((step for step, _, ret in r["curve"] if ret >= threshold), None) for r in runs]
        finals = [r["final_mean_return"] for r in runs]
        lines.append(
            f"| {config} | {median([r['seconds_to_threshold'] for r in runs])} "
            f"| {ratio(ratios[config]['time_to_threshold'])} | {solved}/{len(runs)} | {stable}/{len(runs)} "
            f"| {median(steps_to_threshold, 0)} | {np.median([r['train_seconds'] for r in runs]):.1f} "
            f"| {np.median([r['env_steps_per_s'] for r in runs]):.0f} | {ratio(ratios[config]['env_steps_per_s'])} "
            f"| {np.median([r['updates_per_s'] for r in runs]):.0f} | {np.mean(finals):.1f} ± {np.std(finals):.1f} "
            f"| {median([r.get('sync_ms') for r in runs], 3)} | {median([r.get('raw_allreduce_ms') for r in runs], 3)} |"
        )
    lines += [
        "",
        "Per gradient step, timed part by part on rank 0 after training (mean µs), and peak RSS (max over ranks, MiB):",
        "",
        "| config | sample | forward + backward | sync | clip + optimizer | total | sync share | peak RSS "
        "| env workers' peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config, runs in results.items():
        split = [r["time_split"] for r in runs]
        parts = " | ".join(median([s[f"{part}_us"] for s in split], 0) for part in (*TIME_SPLIT_PARTS, "total"))
        shares = [s["sync_us"] / s["total_us"] for s in split if s.get("sync_us") is not None and s.get("total_us")]
        share = f"{100 * np.median(shares):.1f}%" if shares else "-"
        lines.append(
            f"| {config} | {parts} | {share} | {max(r['peak_rss_mib'] for r in runs):.0f} "
            f"| {max_or_dash([r['env_workers_peak_rss_mib'] for r in runs])} |"
        )
    return "\n".join(lines)


def speedups(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """Per configuration: SB3's median seconds to threshold over its own, and its env steps/s over SB3's."""

    def median_or_none(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return float(np.median(present)) if present else None

    base = results.get("sb3", [])
    base_solve = median_or_none([r["seconds_to_threshold"] for r in base])
    base_speed = median_or_none([r["env_steps_per_s"] for r in base])
    ratios = {}
    for config, runs in results.items():
        solve = median_or_none([r["seconds_to_threshold"] for r in runs])
        speed = median_or_none([r["env_steps_per_s"] for r in runs])
        ratios[config] = {
            # None where a side never reached the threshold: no time to compare
            "time_to_threshold": base_solve / solve if base_solve and solve else None,
            "env_steps_per_s": speed / base_speed if speed and base_speed else None,
        }
    return ratios


def write_plots(results: dict[str, list[dict[str, Any]]], threshold: float, env_id: str, out: Path) -> list[Path]:
    """``returns.png``: eval return vs training seconds (thin: seeds, thick: median); ``speedup.png``: ratios vs SB3
    (when SB3 is in the run)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display (CI, ssh)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (config, runs) in enumerate(results.items()):
        color = f"C{index}"
        curves = [np.array(r["curve"], dtype=np.float64).reshape(-1, 3) for r in runs]
        for curve in curves:
            ax.plot(curve[:, 1], curve[:, 2], color=color, alpha=0.3, linewidth=0.8)
        # Every seed evaluates at the same global steps, so the k-th points line up; the median runs to the shortest.
        length = min(len(curve) for curve in curves)
        if length:
            stacked = np.stack([curve[:length] for curve in curves])
            ax.plot(*np.median(stacked[:, :, 1:], axis=0).T, color=color, linewidth=2.5, marker="o", label=config)
    if np.isfinite(threshold):
        ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    ax.set(xlabel="training seconds (evaluation excluded)", ylabel="mean eval return", title=env_id)
    ax.legend()
    ax.grid(alpha=0.3)
    returns_png = out / "returns.png"
    fig.savefig(returns_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    if "sb3" not in results:
        return [returns_png]  # no baseline in this run: no ratios to plot

    ratios = speedups(results)
    fig, ax = plt.subplots(figsize=(8, 5))
    x = np.arange(len(ratios))
    width = 0.4
    for offset, key, label in (
        (-width / 2, "time_to_threshold", "time to threshold"),
        (width / 2, "env_steps_per_s", "env steps/s"),
    ):
        values = [ratios[config][key] for config in ratios]
        bars = ax.bar(x + offset, [v or 0.0 for v in values], width, label=f"{label} (median, vs sb3)")
        ax.bar_label(bars, labels=[f"{v:.2f}x" if v else "n/a" for v in values], fontsize=8)
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(x, list(ratios))
    ax.set(ylabel="speed-up vs sb3", title=f"{env_id}: speed-up vs SB3 DQN (higher is faster)")
    ax.legend()
    speedup_png = out / "speedup.png"
    fig.savefig(speedup_png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [returns_png, speedup_png]


def system_info() -> dict[str, Any]:
    """The machine without its name: architecture, CPU model, core count, memory."""
    info: dict[str, Any] = {"machine": platform.machine(), "system": platform.system(), "cpu_count": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor() or None
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kib = next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:"))
        info["memory_gib"] = round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        info["memory_gib"] = None
    return info


def machine_line(system: dict[str, Any], versions: dict[str, str | None]) -> str:
    """One line for a report's header: the hardware and every library version."""
    machine = f"{system['machine']}, {system['cpu_model']}, {system['cpu_count']} cores, {system['memory_gib']} GiB, "
    machine += ", ".join(f"{name} {value}" for name, value in versions.items() if name != "mpi_library")
    return machine + f", MPI: {versions['mpi_library']}"


def library_versions() -> dict[str, str | None]:
    """Versions of everything the numbers depend on, MPI library included."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "stable-baselines3", "gymnasium", "numpy", "mpi4py", "sb3-parallel-dqn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    # In a child process: importing mpi4py.MPI initialises MPI, which the driver (itself launching mpirun) avoids.
    probe = "from mpi4py import MPI; print(MPI.Get_library_version().strip().splitlines()[0])"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    versions["mpi_library"] = proc.stdout.strip() or None
    return versions


def run_driver(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {config: [] for config in args.configs}
    commands = []
    for seed in args.seeds:
        for config in args.configs:
            result_file = out / f"{config}_seed{seed}.json"
            command = command_for(config, seed, args, result_file)
            commands.append(shlex.join(command))
            result = reusable_result(result_file, shlex.join(command)) if args.reuse or args.no_run else None
            if result is None and args.no_run:
                print(f"{config} seed {seed}: no result of this command in {out}, left out", flush=True)
                continue
            if result is None:
                if not run_job(command, f"{config} seed {seed}", args.timeout):
                    return 1
                result = json.loads(result_file.read_text())
                result["command"] = shlex.join(command)
                # With the command that made it, so that --reuse can tell whether a later driver asks for the same run.
                result_file.write_text(json.dumps(result))
            else:
                print(f"[{time.strftime('%H:%M:%S')}] {config} seed {seed}: reusing {result_file}", flush=True)
            results[config].append(result)
            print(
                f"    train {result['train_seconds']:.1f} s, first >= threshold at {result['seconds_to_threshold']} s, "
                f"final {result['final_mean_return']:.1f}",
                flush=True,
            )
    results = {config: runs for config, runs in results.items() if runs}
    threshold = resolve_threshold(args.threshold, args.env)
    if args.threshold == SB3_THRESHOLD:
        if "sb3" not in results:
            raise SystemExit("--threshold sb3 needs results of the sb3 configuration (--configs sb3 ...)")
        threshold = float(np.median([r["final_mean_return"] for r in results["sb3"]]))
    for runs in results.values():
        for result in runs:
            result["seconds_to_threshold"], result["seconds_to_stable_threshold"] = seconds_to(result["curve"], threshold)
    table = summarise(results, threshold)
    system, versions = system_info(), library_versions()
    machine = machine_line(system, versions)
    driver_command = shlex.join([sys.executable, *sys.argv])
    summary = {
        "args": vars(args),
        "machine": machine,
        "system": system,
        "versions": versions,
        "command": driver_command,
        "commands": commands,
        "threshold": threshold,
        "speedups": speedups(results),
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    plots = write_plots(results, threshold, args.env, out)
    report = f"# {args.env}\n\n{machine}\n\nCommand: `{driver_command}`\n\nWorker commands:\n\n"
    report += "".join(f"- `{command}`\n" for command in commands)
    report += f"\n{table}\n\n" + " ".join(f"![{plot.stem}]({plot.name})" for plot in plots) + "\n"
    (out / "results.md").write_text(report)
    print(report)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# Parallelism (--parallelism): the time of one gradient update and the bytes per rank, by network and layout.
# ---------------------------------------------------------------------------------------------------------------------

# layout -> (processes, torch threads per process, ParallelDQN keyword arguments)
LAYOUTS: dict[str, tuple[int, int, dict[str, Any]]] = {
    "1 process, 1 thread": (1, 1, {}),
    "1 process, 2 threads": (1, 2, {}),
    "data parallel, 2 ranks": (2, 1, {}),
    "model_parallel_size=2": (2, 1, {"model_parallel_size": 2}),
    "data parallel, 2 ranks + shard_optimizer": (2, 1, {"shard_optimizer": True}),
}


def _net_kwargs(net: str) -> tuple[Any, dict[str, Any]]:
    """The env and policy of a network name: ``4096x4096`` (an MLP on CartPole) or ``cnn`` (NatureCNN on 4x84x84)."""
    if net == "cnn":
        from stable_baselines3.common.envs import FakeImageEnv

        return FakeImageEnv(screen_height=84, screen_width=84, n_channels=4, discrete=True, channel_first=True), {
            "policy": "CnnPolicy"
        }
    return "CartPole-v1", {"policy": "MlpPolicy", "policy_kwargs": {"net_arch": [int(units) for units in net.split("x")]}}


def run_update_worker(args: argparse.Namespace) -> None:
    """Time ``--updates`` gradient updates of one network in one layout (this process is one rank of it)."""
    import torch as th
    from stable_baselines3.common.logger import configure

    from sb3_parallel_dqn import ParallelDQN
    from sb3_parallel_dqn.distributed import comm

    n_procs, threads, kwargs = LAYOUTS[args.layout]
    env, policy_kwargs = _net_kwargs(args.net)
    # The same global batch in every layout: data-parallel ranks take a share each, a split model the whole of it.
    replicas = comm.world_size() // kwargs.get("model_parallel_size", 1)
    batch_size = args.batch_size // replicas
    model = ParallelDQN(policy_kwargs.pop("policy"), env, buffer_size=2_000, batch_size=batch_size, seed=0,
                        torch_num_threads=threads, **policy_kwargs, **kwargs)  # fmt: skip
    model.set_logger(configure(None, []))
    # The ranks of a split model hold the same data (as in training, where their envs are seeded alike).
    buffer, rng = model.replay_buffer, np.random.default_rng(comm.rank() // kwargs.get("model_parallel_size", 1))
    assert buffer is not None
    obs_shape, dtype = buffer.observations.shape[2:], buffer.observations.dtype
    for _ in range(1_000):
        obs = (
            rng.integers(0, 255, size=(1, *obs_shape)).astype(dtype) if dtype == np.uint8 else rng.normal(size=(1, *obs_shape))
        )
        buffer.add(obs, obs, np.array([[rng.integers(2)]]), np.array([rng.normal()]), np.array([False]), [{}])
    seconds = []
    for index in range(args.updates + 2):  # the first two warm up
        comm.allgather(np.zeros(1))  # start together
        start = time.perf_counter()
        model.train(gradient_steps=1, batch_size=batch_size)
        if index >= 2:
            seconds.append(time.perf_counter() - start)
    report = model.memory_report()
    times = comm.allgather(np.array([np.median(seconds)]))[:, 0]
    if comm.is_root():
        result = {"net": args.net, "layout": args.layout, "processes": n_procs, "threads": threads,
                  "batch_per_rank": batch_size, "update_us": 1e6 * float(times.max()), "memory": report,
                  "torch_threads": th.get_num_threads()}  # fmt: skip
        Path(args.result).write_text(json.dumps(result))


def run_parallelism(args: argparse.Namespace) -> int:
    """Every network in every layout, one fresh process (or mpirun job) each; a table of times and bytes per rank."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, commands = [], []
    for net in args.nets:
        for layout, (n_procs, _, _) in LAYOUTS.items():
            result_file = out / f"{net}_{layout.replace(' ', '_').replace(',', '').replace('=', '')}.json"
            command = [sys.executable, "-m", "sb3_parallel_dqn.benchmark", "--worker", "update", "--net", net,
                       "--layout", layout, "--batch-size", str(args.batch_size), "--updates", str(args.updates),
                       "--result", str(result_file)]  # fmt: skip
            if n_procs > 1:
                command = [str(Path(sys.executable).parent / "mpirun"), "-np", str(n_procs), *command]
            commands.append(shlex.join(command))
            if not run_job(command, f"{net}: {layout}", args.timeout):
                return 1
            rows.append(json.loads(result_file.read_text()))
    table = parallelism_table(rows)
    system, versions = system_info(), library_versions()
    machine, driver_command = machine_line(system, versions), shlex.join([sys.executable, *sys.argv])
    report = f"# Update time and memory per rank\n\n{machine}\n\nCommand: `{driver_command}`\n\n"
    report += f"Global batch {args.batch_size}; {args.updates} updates timed (median).\n\nWorker commands:\n\n"
    report += "".join(f"- `{command}`\n" for command in commands) + f"\n{table}\n"
    summary = {"machine": machine, "system": system, "versions": versions, "command": driver_command}
    (out / "results.json").write_text(json.dumps(summary | {"commands": commands, "rows": rows}, indent=1))
    (out / "results.md").write_text(report)
    print(report)
    return 0


def parallelism_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| network | layout | batch per rank | update µs (median) | vs 1 process, 1 thread | parameters MiB per rank "
        "| vs 1 process | gradients MiB | optimizer MiB per rank | vs 1 process |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {row["net"]: row for row in rows if row["layout"] == "1 process, 1 thread"}
    for row in rows:
        memory, reference = row["memory"], base[row["net"]]["memory"]
        lines.append(
            f"| {row['net']} | {row['layout']} | {row['batch_per_rank']} | {row['update_us']:,.0f} "
            f"| {row['update_us'] / base[row['net']]['update_us']:.2f}x | {memory['parameters'] / 2**20:.1f} "
            f"| {memory['parameters'] / reference['parameters']:.2f}x | {memory['gradients'] / 2**20:.1f} "
            f"| {memory['optimizer'] / 2**20:.1f} | {memory['optimizer'] / reference['optimizer']:.2f}x |"
        )
    return "\n".join(lines)
