"""
What ``python -m sb3_parallel_dqn.benchmark --replay`` does: bytes per transition and the time of ``sample()`` for
SB3's ``ReplayBuffer`` (plain and ``optimize_memory_usage``) and :class:`~sb3_parallel_dqn.FrameReplayBuffer`,
filled with the same frame-stacked transitions, side by side in one process.

The transitions are what ``VecFrameStack`` gives for random 84x84 frames (4 stacked, zeros before an episode's
first frame, the terminal observation as the last ``next_obs`` of an episode), with episodes of 100-1000 steps.
Each buffer samples the same indices (the same random state), and the samples are checked equal before timing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from sb3_parallel_dqn.buffers.memory import replay_buffer_nbytes


def stacked_transitions(n: int, seed: int = 0, stack: int = 4, size: int = 84):
    """Yield ``n`` transitions ``(obs, next_obs, done)`` of one env, as VecFrameStack stacks them."""
    rng = np.random.default_rng(seed)
    obs = np.zeros((stack, size, size), np.uint8)
    obs[-1] = rng.integers(0, 256, (size, size), np.uint8)
    remaining = int(rng.integers(100, 1001))
    for _ in range(n):
        next_obs = np.concatenate([obs[1:], rng.integers(0, 256, (1, size, size), np.uint8)])
        remaining -= 1
        done = remaining == 0
        yield obs, next_obs, done
        if done:  # the reset observation: zeros, then the first frame
            obs = np.zeros_like(obs)
            obs[-1] = rng.integers(0, 256, (size, size), np.uint8)
            remaining = int(rng.integers(100, 1001))
        else:
            obs = next_obs


def run_replay(args: argparse.Namespace) -> int:
    import torch as th
    from gymnasium import spaces
    from stable_baselines3.common.buffers import ReplayBuffer

    from sb3_parallel_dqn.bench.benchmark import library_versions, machine_line, system_info
    from sb3_parallel_dqn.buffers.frame import FrameReplayBuffer

    th.set_num_threads(1)
    space, actions = spaces.Box(0, 255, (4, 84, 84), np.uint8), spaces.Discrete(6)
    n = args.replay_size
    buffers = {
        "SB3 ReplayBuffer": ReplayBuffer(n, space, actions, "cpu"),
        "SB3 ReplayBuffer, optimize_memory_usage": ReplayBuffer(
            n, space, actions, "cpu", optimize_memory_usage=True, handle_timeout_termination=False
        ),
        "FrameReplayBuffer": FrameReplayBuffer(n, space, actions, "cpu"),
    }
    start = time.perf_counter()
    add_seconds = dict.fromkeys(buffers, 0.0)
    for obs, next_obs, done in stacked_transitions(n):
        for name, buffer in buffers.items():
            t0 = time.perf_counter()
            buffer.add(obs[None], next_obs[None], np.array([0]), np.array([0.0]), np.array([done]), [{}])
            add_seconds[name] += time.perf_counter() - t0
    print(f"filled {n} transitions in {time.perf_counter() - start:.0f} s", flush=True)
    # The same samples first (the memory-optimised variant differs at episode ends and skips one row: not compared).
    np.random.seed(0)
    ours = buffers["FrameReplayBuffer"].sample(args.replay_batch)
    np.random.seed(0)
    theirs = buffers["SB3 ReplayBuffer"].sample(args.replay_batch)
    assert all(th.equal(a, b) for a, b in zip(ours[:5], theirs[:5], strict=True)), "samples differ"
    rows = []
    for name, buffer in buffers.items():
        times = []
        for _ in range(args.replay_repeats):
            np.random.seed(1)
            t0 = time.perf_counter()
            for _ in range(args.replay_samples):
                buffer.sample(args.replay_batch)
            times.append((time.perf_counter() - t0) / args.replay_samples)
        rows.append({"buffer": name, "bytes": replay_buffer_nbytes(buffer), "sample_us": 1e6 * float(np.median(times)),
                     "add_us": 1e6 * add_seconds[name] / n})  # fmt: skip
    base = rows[0]
    lines = [
        f"| buffer | bytes per transition | GB for 1M transitions | sample({args.replay_batch}) µs (median) "
        "| vs SB3 | add µs |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['buffer']} | {row['bytes'] / n:,.0f} | {row['bytes'] / n * 1e6 / 1e9:.2f} | {row['sample_us']:.0f} "
            f"| {row['sample_us'] / base['sample_us']:.2f}x | {row['add_us']:.1f} |"
        )
    system, versions = system_info(), library_versions()
    machine, command = machine_line(system, versions), shlex.join([sys.executable, *sys.argv])
    report = f"# Replay of 4 x 84 x 84 frames: memory and sampling\n\n{machine}\n\nCommand: `{command}`\n\n"
    report += (
        f"{n} transitions (episodes of 100-1000 steps), {args.replay_samples} calls of sample({args.replay_batch}) "
        f"timed, median of {args.replay_repeats} repeats.\n\n" + "\n".join(lines) + "\n"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"machine": machine, "command": command, "rows": rows}, indent=1))
    (out / "results.md").write_text(report)
    print(report)
    return 0
