"""
Ways to hang a job (issue 23, item 2 and item 3's save-then-load), one per mode; run under ``mpirun -np 2``.

The modes that must end the job (``leave``, ``save_split``, ``save_sharded``, ``predict_split``, ``mismatch``,
``signal``, ``timeout``) print a JSON line ``{"reached": ...}`` on rank 0 just before the call that can never
complete, so that pytest can tell the job got there, then measure how long the job takes to end and read its
message. The others write what each rank found to ``FOLDER/rank<r>.json``.

    mpirun -np 2 python tests/mpi_scripts/hang_scenarios.py MODE FOLDER
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from sb3_parallel_dqn import LockstepError, ParallelDQN, stop_on_signals
from sb3_parallel_dqn.distributed import comm

MODE, FOLDER = sys.argv[1], Path(sys.argv[2])
RANK = comm.rank()
SMALL = dict(learning_starts=0, buffer_size=1_000, train_freq=4, seed=0, policy_kwargs=dict(net_arch=[8, 8]))


def report(**values: object) -> None:
    """This rank's findings, as FOLDER/rank<r>.json (lines printed by two ranks at once can interleave)."""
    (FOLDER / f"rank{RANK}.json").write_text(json.dumps({"rank": RANK, **values}))


def reached(call: str) -> None:
    if RANK == 0:
        print(json.dumps({"reached": call}), flush=True)


if MODE == "leave":
    # A rank whose script ends (as pytest's does after a failure) while rank 0 goes into learn()'s collectives.
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **SMALL)
    if RANK == 0:
        reached("learn")
        model.learn(200)
elif MODE in ("save_split", "save_sharded"):
    # if rank == 0: model.save(path) with a split model or a sharded optimizer: the gather is collective.
    split = dict(model_parallel_size=2) if MODE == "save_split" else dict(shard_optimizer=True)
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **SMALL, **split)
    model.learn(100)
    if RANK == 0:
        reached("save")
        model.save(FOLDER / "rank0_only")
elif MODE == "predict_split":
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **SMALL, model_parallel_size=2)
    if RANK == 0:
        reached("predict")
        model.predict(np.zeros((1, 4), dtype=np.float32))
elif MODE == "mismatch":
    # Rank 0 saves a split model alone while rank 1 goes on training: two collectives that never meet.
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **SMALL, model_parallel_size=2)
    if RANK == 0:
        reached("save")
        model.save(FOLDER / "rank0_only")
    else:
        model.learn(100)
elif MODE == "signal":
    # The stuck job of the issue: the stop request is only read between rollouts, which a stuck rank never reaches.
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **SMALL)
    with stop_on_signals():
        if RANK == 1:
            time.sleep(600)  # alive, handling the signal (a stop request), never arriving
        reached("learn")
        model.learn(200)
elif MODE == "timeout":
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **SMALL)
    if RANK == 1:
        time.sleep(600)  # alive, not in any collective: only the collective timeout can end this
    reached("learn")
    model.learn(200)
elif MODE == "slow_save_then_exit":
    # Healthy: SB3's last line, model.save(path) on every rank, with a slow write; rank 0's script ends right after.
    from sb3_parallel_dqn.io.checkpoints import write_on_root

    def slow_write(target: object) -> None:
        time.sleep(4.5)
        Path(str(target)).write_bytes(b"done")

    write_on_root(FOLDER / "slow.bin", "bin", slow_write)
    report(content=(FOLDER / "slow.bin").read_bytes().decode())
elif MODE == "save_then_sys_exit":
    # Healthy, on 3 ranks: a save on every rank (watchdog notices fly), then sys.exit(0), as the train script ends.
    # Notices nobody received used to sit on COMM_WORLD, where MPICH's MPI_Finalize refused them: the launcher killed
    # the job (exit 9) at its very end.
    from sb3_parallel_dqn.distributed import watchdog

    model = ParallelDQN("MlpPolicy", "CartPole-v1", **SMALL)
    model.save(FOLDER / "model.zip")
    report(done=True)
    if RANK == 0:
        # What atexit does first, then a moment in which the others' exit notices arrive with nobody listening.
        watchdog._watchdog.announce_exit()  # type: ignore[union-attr]
        time.sleep(2)
    sys.exit(0)
elif MODE == "late_broadcast":
    # Healthy, on 4 ranks: a broadcast lets its root and some ranks go on while a late rank has not arrived; they wait
    # in the next collective meanwhile, the late rank's neighbours in the broadcast. Lateness, not a cycle.
    if RANK == 2:
        time.sleep(10)
    comm.broadcast_object("seed", what="the late broadcast")
    comm.allreduce_sum_(np.zeros(2), what="the next Allreduce")
    report(done=True)
elif MODE == "signal_then_long_wait":
    # Healthy: a stop request handled between waits (not in one), then a long wait that is no hang.
    import os
    import signal

    with stop_on_signals():
        if RANK == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # recorded as a stop request
        comm.allreduce_sum_(np.zeros(1), what="a quick Allreduce")
        if RANK == 1:
            time.sleep(25)  # e.g. rank 1 evaluating alone, longer than SIGNAL_GRACE_S
        comm.allreduce_sum_(np.zeros(1), what="the long wait")
    report(done=True)
elif MODE == "save_load_everywhere":
    # SB3's habit: save, then load on every rank; and a rank-0-only save of a plain model, then training goes on.
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **SMALL)
    model.learn(100)
    loaded = 0
    for i in range(8):
        path = FOLDER / f"model_{i}.zip"
        model.save(path)
        ParallelDQN.load(path)
        loaded += 1
    if RANK == 0:
        model.save(FOLDER / "rank0_only.zip")
    model.learn(100)
    report(loaded=loaded, rank0_only=(FOLDER / "rank0_only.zip").is_file())
elif MODE == "split_inputs":
    # The ranks of a model group pass their own observations to a split network's forward pass.
    model = ParallelDQN("MlpPolicy", "CartPole-v1", **SMALL, model_parallel_size=2)
    same = np.full((3, 4), 0.5, dtype=np.float32)
    model.predict(same)  # the same observations: fine
    model.predict(np.full((3, 4), np.nan, dtype=np.float32))  # NaN too (compared bit for bit, not as numbers)
    own = np.full((3, 4), 0.5 + RANK, dtype=np.float32)
    try:
        model.predict(own)
        raised = ""
    except LockstepError as error:
        raised = str(error)
    report(raised=raised)
else:
    raise SystemExit(f"unknown mode {MODE}")
