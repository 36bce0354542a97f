"""
Files: model and replay-buffer checkpoints, atomic writes and per-rank shards (``checkpoints``), and weights-only
loading of untrusted model files (``safe_load``).
"""
