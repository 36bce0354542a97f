"""
``sb3-parallel-dqn <command> ...`` (the console script, as rl_zoo3's ``rl_zoo3 <command>``) and
``python -m sb3_parallel_dqn <command> ...``: one entry point for the package's command lines.

    sb3-parallel-dqn train --env CartPole-v1                  # = python -m sb3_parallel_dqn.train --env CartPole-v1
    mpirun -np 2 sb3-parallel-dqn train --env CartPole-v1
    sb3-parallel-dqn evaluate --env CartPole-v1 -f logs
    sb3-parallel-dqn plot -f logs --env CartPole-v1
    sb3-parallel-dqn benchmark --quick
    sb3-parallel-dqn zoo --env CartPole-v1                    # rl_zoo3's own train script (the zoo extra)
"""

from __future__ import annotations

import importlib
import sys

# command -> the module whose main(argv) runs it
COMMANDS = {
    "train": "sb3_parallel_dqn.train",
    "evaluate": "sb3_parallel_dqn.evaluate",
    "plot": "sb3_parallel_dqn.plot",
    "benchmark": "sb3_parallel_dqn.benchmark",
    "zoo": "sb3_parallel_dqn.zoo.rl_zoo",
}


USAGE = """usage: sb3-parallel-dqn {train,evaluate,plot,benchmark,zoo} [options]

  train      train ParallelDQN from a zoo-style config (one process, or under mpirun)
  evaluate   evaluate a saved model (a run of the log folder, or a file)
  plot       learning curves of runs, to a PNG
  benchmark  SB3 DQN next to ParallelDQN on 1 and W processes
  zoo        rl_zoo3's own train script, with ParallelDQN as parallel_dqn

'sb3-parallel-dqn <command> --help' gives a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        asked = argv[:1] in (["-h"], ["--help"])
        print(
            USAGE if asked or not argv else f"{USAGE}\n\nerror: unknown command {argv[0]!r}",
            file=sys.stdout if asked else sys.stderr,
        )
        return 0 if asked else 2
    command, *rest = argv
    return importlib.import_module(COMMANDS[command]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
