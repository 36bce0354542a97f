"""``python scripts/train.py ...`` is ``python -m sb3_parallel_dqn.train ...``: see :mod:`sb3_parallel_dqn.train`."""

import sys

from sb3_parallel_dqn.train import main

if __name__ == "__main__":
    sys.exit(main())
