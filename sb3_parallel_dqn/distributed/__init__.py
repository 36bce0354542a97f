"""
The MPI layer: everything that talks to other MPI ranks, and nothing of the algorithm (no model, no replay buffer,
no import of the package outside this folder but ``compat``; ``tests/test_layers.py`` enforces it): ``comm`` (the
communicator, ranks, the launcher's environment, one collective per verb on flat buffers), ``watchdog`` (ends a job
stuck in a collective), ``mesh`` (the tensor- and data-parallel groups), ``tensor_parallel`` (Megatron-style split
layers), ``gradients`` (broadcasts, weight checksums), ``lockstep`` (global step and seed arithmetic, the check that
settings are shared, the end-of-rollout agreement) and ``devices`` (threads and GPU per rank).

Importing it does no MPI work, except under an MPI launcher, where ``comm`` initialises MPI on the first import of
the package (so that env workers start outside the job; see :mod:`~sb3_parallel_dqn.distributed.comm`).
"""
