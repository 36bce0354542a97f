"""
Everything that talks to other MPI ranks, and nothing else does: ``comm`` (the communicator, ranks, the launcher's
environment, flat collectives), ``gradients`` (flat gradient averaging, broadcasts, weight checksums), ``lockstep``
(global step and seed arithmetic, the settings every rank must share, the end-of-rollout agreement) and ``devices``
(threads and GPU per rank).
"""
