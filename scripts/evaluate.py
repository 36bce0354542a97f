"""``python scripts/evaluate.py ...`` is ``python -m sb3_parallel_dqn.evaluate ...``: see :mod:`sb3_parallel_dqn.evaluate`."""

import sys

from sb3_parallel_dqn.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
