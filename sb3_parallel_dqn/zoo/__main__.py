"""``python -m sb3_parallel_dqn.zoo``: rl_zoo3's own ``train`` script with ``parallel_dqn`` registered."""

import sys

from sb3_parallel_dqn.zoo.rl_zoo import main

if __name__ == "__main__":
    sys.exit(main())
