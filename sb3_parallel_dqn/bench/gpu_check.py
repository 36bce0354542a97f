"""
The GPU checks of issue 16, in one go: ``python scripts/gpu_check.py --out gpu_check`` on a machine with a GPU.

1. ``identity``: one process, ``ParallelDQN`` against SB3 ``DQN`` on the device, same seed: bit-identical weights and
   Adam state? On CUDA, Adam's default is the multi-tensor (``foreach``) path, and ``ParallelDQN``'s flat update must
   match it. SB3 against SB3 again is the control. Both run with deterministic algorithms: cuBLAS may otherwise
   reorder sums from run to run.
2. ``devices``: ``device="auto"`` under ``mpirun -np W`` for W = 1 .. 2 x the GPUs: which GPU each rank takes
   (``cuda:{local_rank % n_gpus}``).
3. ``sync``: 2 ranks on the device, training with a weight check at every update:
   - the pinned-host staging path (``SB3_PARALLEL_DQN_CUDA_AWARE_MPI=0``);
   - the direct path (``=1``), if this MPI says it is CUDA-aware.

   Both must end with the same weights on every rank.
4. ``throughput``: env steps/s of ``mpirun -np W`` for each ``--ranks`` W, on one GPU (``device="auto"``), with the
   shipped CartPole entry and with the zoo's Atari values (PongNoFrameskip-v4, ``learning_starts`` 1000). Target: 8
   ranks at >= 6x the env steps/s of 1.

``--device cpu --quick`` runs the same on the CPU with tiny budgets. That is how the tests check this script on a
machine without a GPU; ``sync`` then checks the CPU path. Results: ``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

IDENTITY_SETTINGS: dict[str, Any] = {
    "learning_starts": 500, "target_update_interval": 250, "train_freq": 4, "gradient_steps": 2, "buffer_size": 5_000,
    "exploration_fraction": 0.3, "policy_kwargs": {"net_arch": [64, 64]}, "seed": 3,
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (the checks), or cpu (to test this script)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8], help="world sizes for throughput")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (to test the script)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["identity", "devices", "sync", "throughput"])
    parser.add_argument("--timeout", type=float, default=900, help="seconds per job")
    parser.add_argument("--out", default="gpu_check", help="output folder")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def mpirun(n_procs: int, *args: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """Run ``mpirun -np n_procs python -m sb3_parallel_dqn.bench.gpu_check <args>``; its stdout (raise on failure)."""
    command = [str(Path(sys.executable).parent / "mpirun"), "-np", str(n_procs), sys.executable, "-m", __name__, *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


# ---------------------------------------------------------------------------------------------------------------------
# The checks (run by the driver, or by the ranks of an mpirun job it starts)
# ---------------------------------------------------------------------------------------------------------------------


def check_identity(device: str, steps: int) -> dict[str, Any]:
    import torch as th
    from stable_baselines3 import DQN

    from sb3_parallel_dqn import ParallelDQN

    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    th.use_deterministic_algorithms(True)

    def state(model: Any) -> list[Any]:
        optimizer = model.policy.optimizer.state_dict()["state"]
        moments = [optimizer[i][key] for i in sorted(optimizer) for key in ("exp_avg", "exp_avg_sq")]
        return [t.detach().cpu() for t in [*model.policy.state_dict().values(), *moments]]

    runs = {
        name: state(algo("MlpPolicy", "CartPole-v1", device=device, **IDENTITY_SETTINGS).learn(steps))
        for name, algo in (("sb3", DQN), ("sb3 again", DQN), ("ParallelDQN", ParallelDQN))
    }

    def max_difference(a: list[Any], b: list[Any]) -> float:
        return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b, strict=True))

    return {
        "device": device,
        "steps": steps,
        "sb3_repeatable": max_difference(runs["sb3"], runs["sb3 again"]) == 0.0,
        "bit_identical": max_difference(runs["sb3"], runs["ParallelDQN"]) == 0.0,
        "max_abs_difference": max_difference(runs["sb3"], runs["ParallelDQN"]),
    }


def device_worker() -> None:
    """(every rank) The device that ``auto`` gives this rank."""
    from sb3_parallel_dqn.distributed import comm
    from sb3_parallel_dqn.distributed.devices import pick_device

    device = str(pick_device("auto", collective=True))
    rows = comm.allgather_object({"rank": comm.rank(), "local_rank": comm.compute_local_rank(), "device": device})
    if comm.is_root():
        print(json.dumps(rows))


def sync_worker(device: str, steps: int) -> None:
    """(every rank) Train with a weight check at every update; print each rank's weight digest."""
    import hashlib

    from sb3_parallel_dqn import ParallelDQN, compat
    from sb3_parallel_dqn.distributed import comm, gradients

    forced = os.environ.pop("SB3_PARALLEL_DQN_CUDA_AWARE_MPI", None)
    available = gradients.cuda_aware_mpi()  # what this MPI says, whatever the path forced for this run
    if forced is not None:
        os.environ["SB3_PARALLEL_DQN_CUDA_AWARE_MPI"] = forced
    model = ParallelDQN("MlpPolicy", "CartPole-v1", device=device, sync_check_interval=1, **IDENTITY_SETTINGS)
    model.learn(steps)
    digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.policy.parameters())).hexdigest()
    digests = comm.allgather_object(digest)
    if comm.is_root():
        print(json.dumps({"device": str(model.device), "cuda_aware": gradients.cuda_aware_mpi(), "digests": digests,
                          "mpi_cuda_aware": available, "n_updates": compat.n_updates(model)}))  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------------


def run_checks(args: argparse.Namespace) -> dict[str, Any]:
    import torch as th

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"device": args.device, "quick": args.quick}
    if args.device.startswith("cuda"):
        if not th.cuda.is_available():
            raise SystemExit("error: no CUDA device: run with --device cpu to test the script")
        results["gpus"] = [th.cuda.get_device_name(i) for i in range(th.cuda.device_count())]
    n_gpus = max(1, th.cuda.device_count()) if args.device.startswith("cuda") else 1
    steps = 1_500 if args.quick else 5_000
    if "identity" not in args.skip:
        results["identity"] = check_identity(args.device, steps)
    if "devices" not in args.skip:
        results["devices"] = {w: json.loads(mpirun(w, "--worker", "devices").splitlines()[-1]) for w in (1, 2 * n_gpus)}
    if "sync" not in args.skip:
        # On CUDA: the pinned-host staging path, then the direct one if the ranks' MPI says it can read GPU memory.
        cuda = args.device.startswith("cuda")
        paths, device = ({"staging": "0"}, "auto") if cuda else ({"cpu": "0"}, "cpu")
        results["sync"] = {}
        while paths:
            name, flag = paths.popitem()
            stdout = mpirun(2, "--worker", "sync", "--device", device, env={"SB3_PARALLEL_DQN_CUDA_AWARE_MPI": flag})
            results["sync"][name] = json.loads(stdout.splitlines()[-1])
            if cuda and name == "staging" and results["sync"][name]["mpi_cuda_aware"]:
                paths["direct"] = "1"
    if "throughput" not in args.skip:
        results["throughput"] = throughput(args, out)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(report(results))
    print(report(results))
    return results


def throughput(args: argparse.Namespace, out: Path) -> dict[str, list[dict[str, Any]]]:
    """Env steps/s at each world size, from benchmark workers (``--device auto``: one GPU per local rank modulo)."""
    device = "auto" if args.device.startswith("cuda") else "cpu"
    workloads = {
        "CartPole-v1": ["-n", "2048" if args.quick else "50000"],
        "PongNoFrameskip-v4": ["-n", "1200" if args.quick else "4000", "-params", "learning_starts:1000"],
    }
    table: dict[str, list[dict[str, Any]]] = {}
    for env_id, extra in workloads.items():
        table[env_id] = []
        for world_size in args.ranks:
            result_file = out / f"{env_id}_W{world_size}.json"
            worker = [sys.executable, "-m", "sb3_parallel_dqn.benchmark", "--worker", "pdqn", "--env", env_id, "--seed",
                      "0", "--result", str(result_file), "--eval-freq", "10000000", "--eval-episodes", "1",
                      "--final-episodes", "1", "--profile-steps", "20", "--device", device, *extra]  # fmt: skip
            command = [str(Path(sys.executable).parent / "mpirun"), "-np", str(world_size), *worker]
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, timeout=args.timeout)
            result = json.loads(result_file.read_text())
            keys = ("env_steps_per_s", "updates_per_s", "train_seconds", "sync_ms")
            row = {"ranks": world_size, **{key: result.get(key) for key in keys}}
            table[env_id].append({**row, "wall_seconds": time.perf_counter() - started})
    return table


def report(results: dict[str, Any]) -> str:
    lines = [f"# GPU checks ({results['device']}{', quick' if results['quick'] else ''})", ""]
    if "gpus" in results:
        lines += [f"GPUs: {', '.join(results['gpus'])}", ""]
    if "identity" in results:
        ident = results["identity"]
        lines += [f"- identity vs SB3 DQN ({ident['steps']} steps): bit-identical {ident['bit_identical']} (max |diff| "
                  f"{ident['max_abs_difference']:.3g}); SB3 repeatable {ident['sb3_repeatable']}"]  # fmt: skip
    for world_size, ranks in results.get("devices", {}).items():
        lines += [f"- device auto, {world_size} rank(s): " + ", ".join(f"{r['rank']}->{r['device']}" for r in ranks)]
    for name, sync in results.get("sync", {}).items():
        lines += [f"- sync, {name} path on {sync['device']}: ranks identical {len(set(sync['digests'])) == 1} after "
                  f"{sync['n_updates']} updates (CUDA-aware MPI: {sync['cuda_aware']})"]  # fmt: skip
    for env_id, rows in results.get("throughput", {}).items():
        base = rows[0]["env_steps_per_s"]
        lines += ["", f"{env_id}:", "", "| ranks | env steps/s | vs first | updates/s | sync ms |", "|---|---|---|---|---|"]
        for r in rows:
            sync = "-" if r["sync_ms"] is None else f"{r['sync_ms']:.3f}"
            lines.append(f"| {r['ranks']} | {r['env_steps_per_s']:.0f} | {r['env_steps_per_s'] / base:.2f}x "
                         f"| {r['updates_per_s']:.0f} | {sync} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "devices":
        device_worker()
    elif args.worker == "sync":
        sync_worker(args.device, 1_500 if args.device == "cpu" else 3_000)
    else:
        results = run_checks(args)
        ident = results.get("identity", {})
        return 0 if ident.get("bit_identical", True) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
