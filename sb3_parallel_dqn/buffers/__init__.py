"""
Replay buffers: :class:`PrioritizedReplayBuffer` (``prioritized``, on the :class:`SumTree` of ``sum_tree``),
:class:`FrameReplayBuffer` and :class:`PrioritizedFrameReplayBuffer` (``frame``: each frame of frame-stacked pixels
stored once), and what a buffer holds in bytes (``memory``). ``prioritized`` also holds how ``ParallelDQN`` sets
its buffer up from what was asked, and fits a loaded one to it.
"""

from sb3_parallel_dqn.buffers.frame import FrameReplayBuffer, PrioritizedFrameReplayBuffer
from sb3_parallel_dqn.buffers.prioritized import PrioritizedReplayBuffer
from sb3_parallel_dqn.buffers.sum_tree import SumTree

__all__ = ["FrameReplayBuffer", "PrioritizedFrameReplayBuffer", "PrioritizedReplayBuffer", "SumTree"]
