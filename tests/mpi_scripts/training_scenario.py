"""
One ``mpirun -np 2`` job that checks most data-parallel properties in turn, instead of one job per property (each
job start costs seconds): every section is one of the scripts next to this one, run on every rank, and reports its
results under ``out_dir/<section>/`` (report.py; tests/test_mpi.py reads them), and ``out_dir/sections_rank<r>.json``
lists the sections each rank finished.

Usage: ``training_scenario.py OUT_DIR``. Sections, in order:

1. ``gradients``: one step on per-rank halves of a batch equals SB3's step on the whole batch (with and without
   clipping), ranks identical after (grad_average.py);
2. ``train_sync``: 2 SubprocVecEnv workers per rank (forkserver), 3-step returns: bit-identical weights, global step
   count, seeds, episode statistics, tensorboard and model files on rank 0 only (train_sync.py);
3. ``prioritized``: prioritized replay + dueling + Double DQN + 3-step returns: the importance weights are divided by
   the maximum over both ranks at every step (prioritized_dueling.py);
4. ``stop``: a callback stops rank 1 mid-rollout: both ranks stop at the same rollout and agree on steps, episodes
   and the checkpoint; resumed from rank 0's file, each rank's episode window holds its own episodes (stop_one_rank.py);
5. ``load``: load() is local (rank 0 alone loads and predicts) and learn() gives every rank rank 0's weights and
   optimizer state (load_then_learn.py);
6. ``diverge``: a weight changed on rank 1 only is caught by the next sync check on every rank (diverge.py).
"""

import sys
from pathlib import Path

import diverge
import grad_average
import load_then_learn
import prioritized_dueling
import stop_one_rank
import train_sync
from sections import run_sections

if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    sections = {
        "gradients": lambda folder: (
            grad_average.check(folder, max_grad_norm=1e9),
            grad_average.check(folder, max_grad_norm=0.05),
        ),
        "train_sync": lambda folder: train_sync.run(folder, "forkserver", n_steps=3),
        "prioritized": prioritized_dueling.run,
        "stop": stop_one_rank.run,
        "load": load_then_learn.run,
        "diverge": diverge.run,
    }
    run_sections(out_dir, sections)
