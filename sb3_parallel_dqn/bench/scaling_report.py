"""
Learning as W grows (``benchmark --scaling-report``): global env steps to a stable solve at each world size and
``scaling`` mode, and the wall-clock time that W real cores would take to get there.

The inputs are benchmark output folders, one per ``scaling`` mode, each with ``pdqn-<W>`` runs over seeds (the runs
may have been oversubscribed: steps do not depend on the machine). **Steps to P1** is the global step of the second
of the first two evaluations in a row at or above the threshold. A seed that never gets there counts as never in the
median.

The projection uses per-rank costs measured on an unloaded machine: ``--costs``, a folder of ``pdqn-2`` runs of the
same entry, with their profiled updates. The model, per rank, for W ranks on W cores:

    T(W) = S / W * t_step + U * (t_update + t_sync(W))

- ``S``: steps to P1;
- ``U``: the sequential updates made by then (``S`` times the run's updates per global step);
- ``t_step``: one env step of one rank (action, env, replay), that is, training time minus update time over steps per
  rank;
- ``t_update``: sample, forward, backward and optimizer at the run's batch per rank;
- ``t_sync(W) = t_sync(2) * log2(W)``: the gradient ``Allreduce``. Its buffer is small (18 KB for [64, 64]), so it is
  latency-bound, and MPICH reduces such buffers in log2(W) rounds of recursive doubling.

Collection and updates do not overlap, and the ranks wait for each other at every update. That is how ``ParallelDQN``
runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from sb3_parallel_dqn.bench.benchmark import stable_solve


def steps_to_p1(curve: list[tuple[int, float, float]], threshold: float) -> int | None:
    """The global step of the second of the first two evaluations in a row at or above ``threshold``."""
    stable = stable_solve(curve, threshold)
    return None if stable is None else stable[0]


def measured_costs(folder: Path) -> dict[str, float]:
    """Per-rank costs (seconds) from ``pdqn-2`` runs on an unloaded machine: medians over their seeds."""
    runs = json.loads((folder / "results.json").read_text())["results"]["pdqn-2"]
    update = [(r["time_split"]["total_us"] - r["time_split"]["sync_us"]) * 1e-6 for r in runs]
    sync = [r["time_split"]["sync_us"] * 1e-6 for r in runs]
    step = [
        (r["train_seconds"] - r["n_updates"] * r["time_split"]["total_us"] * 1e-6) / (r["num_timesteps"] / 2) for r in runs
    ]
    return {"t_step": float(np.median(step)), "t_update": float(np.median(update)), "t_sync2": float(np.median(sync))}


def projected_seconds(steps: float, world_size: int, updates_per_step: float, costs: dict[str, float]) -> float:
    sync = costs["t_sync2"] * math.log2(world_size) if world_size > 1 else 0.0
    return steps / world_size * costs["t_step"] + steps * updates_per_step * (costs["t_update"] + sync)


def scaling_rows(folders: list[tuple[str, Path]], costs: dict[str, float] | None) -> list[dict[str, Any]]:
    """One row per (mode, W): seeds, solved, median steps to P1, updates per step, projected seconds. A mode may come
    from several folders (different world sizes run by different drivers)."""
    rows = []
    for mode, folder in folders:
        summary = json.loads((folder / "results.json").read_text())
        threshold = float(summary["threshold"])
        for config, runs in summary["results"].items():
            if not config.startswith("pdqn-"):
                continue
            world_size = int(config.split("-")[1])
            steps = [steps_to_p1(run["curve"], threshold) for run in runs]
            per_step = float(np.median([run["n_updates"] / run["num_timesteps"] for run in runs]))
            # a seed that never solved counts as never: the median is infinite when half of them did not
            median = float(np.median([math.inf if s is None else s for s in steps]))
            row = {"mode": mode, "world_size": world_size, "seeds": len(runs), "steps": steps, "median_steps": median,
                   "solved": sum(s is not None for s in steps), "updates_per_step": per_step,
                   "final": float(np.mean([run["final_mean_return"] for run in runs]))}  # fmt: skip
            if costs is not None:
                row["projected_s"] = projected_seconds(median, world_size, per_step, costs)
            rows.append(row)
    return sorted(rows, key=lambda row: (row["mode"] != "none", row["mode"], row["world_size"]))


def scaling_table(rows: list[dict[str, Any]], threshold: float) -> str:
    def fmt(value: float, digits: int = 0) -> str:
        return "never" if math.isinf(value) else f"{value:,.{digits}f}"

    # W=2, no rule: what the entries were tuned for (a rule changes nothing at the tuned world size)
    base = next((row for row in rows if row["mode"] == "none" and row["world_size"] == 2), None)
    lines = [
        f"| scaling | W | solved (P1 at {threshold:g}) | global steps to P1 (median) | per seed | vs W=2 | updates per "
        "global step | final return (mean of seeds) | projected s on W cores | vs W=2 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ref = base or row
        seeds = ", ".join("never" if s is None else f"{s:,}" for s in row["steps"])
        projected = row.get("projected_s")
        speedup = "-" if projected is None or math.isinf(projected) else f"{ref.get('projected_s', math.nan) / projected:.2f}x"
        ratio = row["median_steps"] / ref["median_steps"] if math.isfinite(ref["median_steps"]) else math.nan
        lines.append(
            f"| {row['mode']} | {row['world_size']} | {row['solved']}/{row['seeds']} | {fmt(row['median_steps'])} | {seeds} "
            f"| {'-' if not math.isfinite(ratio) else f'{ratio:.2f}x'} | {row['updates_per_step']:.4f} | {row['final']:.1f} "
            f"| {'-' if projected is None else fmt(projected, 1)} | {speedup} |"
        )
    return "\n".join(lines)


def run_scaling_report(args: Any) -> int:
    """``benchmark --scaling-report mode=folder ... [--costs folder] --out folder``: write results.md and .json."""
    folders = [(item.partition("=")[0], Path(item.partition("=")[2])) for item in args.scaling_report]
    costs = measured_costs(Path(args.costs)) if args.costs else None
    rows = scaling_rows(folders, costs)
    threshold = float(json.loads((folders[0][1] / "results.json").read_text())["threshold"])
    table = scaling_table(rows, threshold)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"folders": [[m, str(f)] for m, f in folders], "costs": costs,
                                                  "rows": rows}, indent=1))  # fmt: skip
    cost_line = "" if costs is None else (
        f"Per-rank costs (from {args.costs}): env step {costs['t_step'] * 1e6:.0f} µs, update {costs['t_update'] * 1e6:.0f} "
        f"µs, sync on 2 ranks {costs['t_sync2'] * 1e6:.0f} µs.\n\n"
    )  # fmt: skip
    (out / "results.md").write_text(f"# Steps to a stable solve by world size\n\n{cost_line}{table}\n")
    print(cost_line + table)
    return 0
