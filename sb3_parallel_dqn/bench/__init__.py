"""
The benchmark tools behind ``python -m sb3_parallel_dqn.benchmark`` and ``scripts/gpu_check.py``: the benchmark
runner (``benchmark``: SB3's DQN and ParallelDQN side by side on a config entry), the replay buffer benchmark
(``replay_benchmark``), the scaling report (``scaling_report``) and the GPU checks (``gpu_check``). A layer above
the zoo's (they read its configs); nothing below imports them.
"""
