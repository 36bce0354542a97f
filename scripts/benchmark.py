"""``python scripts/benchmark.py ...`` is ``python -m sb3_parallel_dqn.benchmark ...`` (see that module)."""

import sys

from sb3_parallel_dqn.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
