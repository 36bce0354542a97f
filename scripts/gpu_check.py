"""``python scripts/gpu_check.py ...`` is ``python -m sb3_parallel_dqn.bench.gpu_check ...`` (see that module)."""

import sys

from sb3_parallel_dqn.bench.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
