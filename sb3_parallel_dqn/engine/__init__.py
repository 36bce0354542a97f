"""
The speed paths of ``ParallelDQN``, each bit-identical to the SB3 code it stands for, behind one object
(:class:`TrainingEngine`): flat-buffer updates (``flat_update``), the lean Q-network forward (``q_forward``) and
batched replay sampling (``sampling``).
"""

from sb3_parallel_dqn.engine.engine import STEP_PARTS, PartTimer, TrainingEngine

__all__ = ["STEP_PARTS", "PartTimer", "TrainingEngine"]
