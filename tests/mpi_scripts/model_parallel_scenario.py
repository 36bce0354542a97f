"""
Model parallelism and the sharded optimizer under ``mpirun -np W`` (W = 2, or 4 for a 2x2 mesh), section by section;
each rank reports its results in ``OUT_DIR/results_rank<r>.json`` and the sections it finished in
``OUT_DIR/sections_rank<r>.json`` (report.py). Usage:
``model_parallel_scenario.py OUT_DIR``.

1. ``exactness``: all W ranks as one model group: sharded forward and backward against the unsplit network
   (tensor_parallel_exactness.py, every case);
2. ``same_data``: a model split over 2 ranks trains 300 updates on the same replay data as the unsplit model
   (model_parallel_size=1): the largest relative difference of the weights;
3. ``zero``: shard_optimizer against plain data parallelism on the same per-rank data (each rank its own), without
   (300 updates) and with gradient clipping (20 updates), and on 4 ranks with model parallelism too;
4. ``learn``: learn() split over 2 ranks (and sharded, on 4): replicas in sync, the whole model saved, read by stock
   SB3, loaded back into the split mesh, into whole models and into another mesh shape (saved again: the same
   weights and Adam moments); memory per rank;
5. ``mesh_error``: a model-parallel size that does not divide the job is refused on every rank, before any work.
"""

import sys
from pathlib import Path

import numpy as np
import torch as th
from report import report
from stable_baselines3 import DQN
from stable_baselines3.common.logger import configure

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.distributed import comm, mesh
from sb3_parallel_dqn.engine import model_parallel

# isort: split
import tensor_parallel_exactness

RANK, WORLD = comm.rank(), comm.world_size()
NET = {"net_arch": [128, 96]}  # three Linear layers: a split pair, then the output layer whole


def fill(model: ParallelDQN, seed: int, n: int = 2_000) -> None:
    """The same n transitions for the same seed, whatever the mesh."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        obs = rng.normal(size=(1, 4)).astype(np.float32)
        model.replay_buffer.add(
            obs, obs + rng.normal(scale=0.1, size=(1, 4)).astype(np.float32), np.array([[rng.integers(2)]]),
            np.array([rng.normal()]), np.array([rng.random() < 0.05]), [{}],
        )  # fmt: skip


def trained(model_parallel_size: int, data_seed: int, n_updates: int = 300, **kwargs) -> dict[str, th.Tensor]:
    """The whole weights after ``n_updates`` gradient steps on fixed data (batches drawn from np.random, seeded)."""
    model = ParallelDQN("MlpPolicy", "CartPole-v1", learning_rate=1e-3, batch_size=64, policy_kwargs=NET, seed=3,
                        model_parallel_size=model_parallel_size, **kwargs)  # fmt: skip
    model.set_logger(configure(None, []))
    fill(model, data_seed)
    np.random.seed(5)
    model.train(gradient_steps=n_updates, batch_size=64)
    with model_parallel.whole_model(model, model._learner, model._mesh, model.shard_optimizer):
        return {name: tensor.detach().clone() for name, tensor in model.policy.state_dict().items()}


def largest_difference(a: dict[str, th.Tensor], b: dict[str, th.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in a)


def q_values(model: ParallelDQN) -> np.ndarray:
    obs = th.as_tensor(np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32))
    with th.no_grad():
        return model.q_net(obs).numpy()


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    results: dict = {}
    sections: list[str] = []

    def done(name: str) -> None:
        comm.comm().Barrier()  # type: ignore[union-attr]
        sections.append(name)
        report(out_dir, "sections", done=sections)

    # 1. exactness: every rank in one model group
    grid = mesh.get(WORLD)
    results["exactness"] = [
        tensor_parallel_exactness.check(case, dtype, grid)
        for case in tensor_parallel_exactness.CASES
        for dtype in (th.float64, th.float32)
    ]
    done("exactness")

    # 2. same data: split over 2 ranks against whole, the same transitions on every rank
    split, whole = trained(2, data_seed=0), trained(1, data_seed=0)
    results["same_data_relative_difference"] = largest_difference(split, whole)
    done("same_data")

    # 3. zero: sharded Adam against plain data parallelism, each rank its own data
    # With clipping at work the clip coefficients differ in their last bits; like any such perturbation (plain
    # training with max_grad_norm changed by 2e-7 does the same) that grows over hundreds of updates on this data:
    # compare 20 updates there.
    for clip, label, n_updates in ((1e9, "no_clip", 300), (0.05, "clip", 20)):
        plain = trained(1, data_seed=RANK, n_updates=n_updates, max_grad_norm=clip)
        sharded = trained(1, data_seed=RANK, n_updates=n_updates, max_grad_norm=clip, shard_optimizer=True)
        results[f"zero_{label}_bit_identical"] = all(th.equal(plain[k], sharded[k]) for k in plain)
        results[f"zero_{label}_relative_difference"] = largest_difference(sharded, plain)
        if WORLD >= 4:  # with model parallelism too: 2 replicas of 2 shards
            plain = trained(2, data_seed=RANK // 2, n_updates=n_updates, max_grad_norm=clip)
            sharded = trained(2, data_seed=RANK // 2, n_updates=n_updates, max_grad_norm=clip, shard_optimizer=True)
            results[f"zero_mp_{label}_bit_identical"] = all(th.equal(plain[k], sharded[k]) for k in plain)
            results[f"zero_mp_{label}_relative_difference"] = largest_difference(sharded, plain)
    done("zero")

    # 4. learn, split (and sharded on 4 ranks), then files across mesh shapes
    shard = WORLD >= 4
    whole_wide = ParallelDQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [512, 512]}, buffer_size=5_000, seed=0)
    results["memory_whole"] = whole_wide.memory_report()
    wide = ParallelDQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [512, 512]}, model_parallel_size=2,
                       shard_optimizer=shard, buffer_size=5_000, seed=0)  # fmt: skip
    results["memory_split"] = wide.memory_report()
    model = ParallelDQN("MlpPolicy", "CartPole-v1", learning_starts=200, policy_kwargs={"net_arch": [64, 64]},
                        model_parallel_size=2, shard_optimizer=shard, sync_check_interval=20, seed=1)  # fmt: skip
    model.learn(1_500)
    results["num_timesteps"], results["n_updates"] = model.num_timesteps, model._n_updates
    path = out_dir / "split.zip"
    model.save(path)  # every rank: the shards are gathered
    q_split = q_values(model)
    results["q_split"] = q_split.tolist()
    comm.comm().Barrier()  # type: ignore[union-attr]
    if RANK == 0:  # rank 0 alone loads a whole model (M = 1): the split model, on every rank, must not notice
        ParallelDQN.load(path, device="cpu")
    results["lone_load_q_difference"] = float(np.abs(q_values(model) - q_split).max())
    stock = DQN.load(path, device="cpu")  # stock SB3 reads the whole file
    results["stock_max_difference"] = float(np.abs(q_values(stock) - q_split).max())
    alone = ParallelDQN.load(path, device="cpu")  # whole (M = 1): local, no collective
    results["whole_max_difference"] = float(np.abs(q_values(alone) - q_split).max())
    split_again = ParallelDQN.load(path, env=model.get_env(), model_parallel_size=2, shard_optimizer=shard, device="cpu")
    results["reloaded_max_difference"] = float(np.abs(q_values(split_again) - q_split).max())
    split_again.learn(300, reset_num_timesteps=False)  # goes on from the loaded shards and moments
    results["resumed_num_timesteps"] = split_again.num_timesteps
    # Into another mesh shape (2 ranks: data parallel with the sharded optimizer; 4: split in 4, optimizer whole),
    # then saved again before any update: the same whole weights and Adam moments come back out.
    reshaped = ParallelDQN.load(path, env=model.get_env(), model_parallel_size=1 if WORLD == 2 else 4,
                                shard_optimizer=not shard, device="cpu")  # fmt: skip
    results["reshaped_max_difference"] = float(np.abs(q_values(reshaped) - q_split).max())
    reshaped.save(out_dir / "reshaped.zip")
    comm.comm().Barrier()  # type: ignore[union-attr]
    first, again = DQN.load(path, device="cpu"), DQN.load(out_dir / "reshaped.zip", device="cpu")
    results["reshaped_round_trip_exact"] = all(
        th.equal(first.policy.state_dict()[key], again.policy.state_dict()[key]) for key in first.policy.state_dict()
    ) and all(
        th.equal(first.policy.optimizer.state[p1][name], again.policy.optimizer.state[p2][name])
        for p1, p2 in zip(first.policy.q_net.parameters(), again.policy.q_net.parameters(), strict=True)
        for name in ("step", "exp_avg", "exp_avg_sq")
    )
    reshaped.learn(300, reset_num_timesteps=False)
    results["reshaped_resumed_num_timesteps"] = reshaped.num_timesteps
    done("learn")

    # 5. mesh_error: refused on every rank before any work
    try:
        ParallelDQN("MlpPolicy", "CartPole-v1", model_parallel_size=3)
    except ValueError as error:
        results["mesh_error"] = str(error)
    done("mesh_error")
    report(out_dir, "results", **results)
