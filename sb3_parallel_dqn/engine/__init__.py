"""
The algorithm's side of ``ParallelDQN``, in two roles that the model composes, and the step arithmetic they share:

- :class:`Collector` (``collector``): acting on the envs and the ranks' end-of-rollout agreement;
- :class:`Learner` (``learner``): sampling, targets, the TD loss, the update and the sync, on the speed paths
  (the update from :mod:`sb3_parallel_dqn.updates`, batched replay sampling in ``sampling``);
- :class:`GlobalClock` (``clock``): SB3's counters counting the job's env steps.

``model_parallel`` is what the model does with a split network or a sharded optimizer (cut, gather, check);
``settings_check`` the settings every rank must share. The MPI layer below, :mod:`sb3_parallel_dqn.distributed`,
knows no model.
"""

from sb3_parallel_dqn.engine.clock import GlobalClock
from sb3_parallel_dqn.engine.collector import Collector
from sb3_parallel_dqn.engine.learner import STEP_PARTS, Learner, PartTimer

__all__ = ["STEP_PARTS", "Collector", "GlobalClock", "Learner", "PartTimer"]
