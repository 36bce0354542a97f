"""``python -m sb3_parallel_dqn <command> ...``: see :mod:`sb3_parallel_dqn.cli`."""

import sys

from sb3_parallel_dqn.cli import main

if __name__ == "__main__":
    sys.exit(main())
