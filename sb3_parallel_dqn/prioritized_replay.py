"""
The module path of release 0.1.0a0 for what is now :mod:`sb3_parallel_dqn.buffers.prioritized`. Replay buffers and
models saved by that release name their classes by this path in their pickles (``tests/test_saved_files.py``
loads such files), so every class of it stays importable here. New code imports from the new path.
"""

from sb3_parallel_dqn.buffers.prioritized import PrioritizedReplayBuffer

__all__ = ["PrioritizedReplayBuffer"]
