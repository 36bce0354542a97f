"""``python scripts/plot.py ...`` is ``python -m sb3_parallel_dqn.plot ...``: see :mod:`sb3_parallel_dqn.plot`."""

import sys

from sb3_parallel_dqn.plot import main

if __name__ == "__main__":
    sys.exit(main())
