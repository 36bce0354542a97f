"""
Sharded Q-networks against the unsplit network they were cut from, on every rank of ``mpirun -np W`` (one model
group of W ranks): the forward outputs, the gradients of every parameter (a shard's against the matching slice of
the whole gradient) and of the input, in float64 (<= 1e-10) and float32 (<= 1e-5, relative), for MLPs with an even
and an odd number of layers, uneven splits, dueling heads and the CNN policy. Also: whole tensors load into shards,
and the gathered state dict is the whole network's. :func:`check` returns what it measured for one case and dtype;
model_parallel_scenario.py reports them, tests/test_model_parallel.py compares them with the tolerances. Alone:
``mpirun -np W python tensor_parallel_exactness.py OUT_DIR`` (report.py, ``exactness_rank<r>.json``).
"""

import copy
import sys

import numpy as np
import torch as th
from gymnasium import spaces
from report import report
from stable_baselines3.common import policies as sb3_policies

from sb3_parallel_dqn.distributed import comm, mesh
from sb3_parallel_dqn.distributed.tensor_parallel import gathered_state_dict, shard_q_network, shard_rule
from sb3_parallel_dqn.policies import CnnPolicy, DQNPolicy

BOX = spaces.Box(-1, 1, shape=(6,), dtype=np.float32)
IMAGE = spaces.Box(0, 255, shape=(4, 36, 36), dtype=np.uint8)
ACTIONS = spaces.Discrete(5)
CASES = {
    "mlp-even": (DQNPolicy, BOX, {"net_arch": [32]}),  # Linears: 6x32 (column), 32x5 (row)
    "mlp-odd": (DQNPolicy, BOX, {"net_arch": [32, 48]}),  # a pair, then the output layer whole
    "mlp-two-pairs-uneven": (DQNPolicy, BOX, {"net_arch": [33, 35, 37]}),  # 4 Linears: two pairs, uneven splits
    "dueling-odd": (DQNPolicy, BOX, {"net_arch": [32], "dueling": True}),  # trunk column, both heads row
    "dueling-even": (DQNPolicy, BOX, {"net_arch": [16, 16], "dueling": True}),  # a pair, heads whole
    "cnn": (CnnPolicy, IMAGE, {"features_extractor_kwargs": {"features_dim": 64}}),  # NatureCNN's Linear + output
    "cnn-dueling": (CnnPolicy, IMAGE, {"features_extractor_kwargs": {"features_dim": 64}, "dueling": True}),
}
PREPROCESS = sb3_policies.preprocess_obs


def relative_error(ours: th.Tensor, whole: th.Tensor) -> float:
    return float((ours - whole).abs().max() / whole.abs().max().clamp_min(1e-30))


def check(name: str, dtype: th.dtype, grid: mesh.Mesh) -> dict:
    """
    For one case and dtype: how many layers were split, the parameters whose gradient has another shape than the
    matching slice of the whole gradient, the largest relative error (the outputs, every gradient, the input's), and
    whether whole tensors load into the shards and the gathered state dict is the whole network's, bit for bit.
    """
    policy_class, space, kwargs = CASES[name]
    # SB3 casts observations to float32; the float64 check needs float64 all the way.
    sb3_policies.preprocess_obs = lambda obs, *args, **kwargs: PREPROCESS(obs, *args, **kwargs).to(dtype)
    th.manual_seed(0)
    policy = policy_class(space, ACTIONS, lambda _: 1e-3, **kwargs)
    whole = policy.q_net.to(dtype)
    sharded = copy.deepcopy(whole)
    measured: dict = {"case": name, "dtype": str(dtype).split(".")[1]}
    measured["n_split"] = shard_q_network(sharded, grid.model_rank, grid.model_parallel_size)

    generator = th.Generator().manual_seed(1)  # the same batch on every rank
    if space is IMAGE:  # uint8 pixels: no input gradient
        obs_whole = obs_ours = th.randint(0, 256, (8, *space.shape), generator=generator).to(th.uint8)
    else:  # the input's gradient too: it needs the backward Allreduce of the first column-parallel layer
        obs_whole = th.randn(8, 6, generator=generator, dtype=dtype).requires_grad_()
        obs_ours = obs_whole.detach().clone().requires_grad_()
    q_whole, q_ours = whole(obs_whole), sharded(obs_ours)
    errors = [relative_error(q_ours, q_whole)]
    weights = th.randn(q_whole.shape, generator=generator, dtype=dtype)
    (q_whole * weights).sum().backward()
    (q_ours * weights).sum().backward()
    rules = shard_rule(sharded)
    whole_grads = {key: param.grad for key, param in whole.named_parameters()}
    measured["grad_shape_mismatches"] = []
    for key, param in sharded.named_parameters():
        expected = rules[key](whole_grads[key]) if key in rules else whole_grads[key]
        if param.grad.shape != expected.shape:
            measured["grad_shape_mismatches"].append(key)
        else:
            errors.append(relative_error(param.grad, expected))
    if obs_whole.requires_grad:
        errors.append(relative_error(obs_ours.grad, obs_whole.grad))
    measured["largest_relative_error"] = max(errors)

    # A whole state dict loads into the shards; the gathered one is the whole network's, bit for bit.
    fresh = copy.deepcopy(sharded)
    for param in fresh.parameters():
        param.data.zero_()
    fresh.load_state_dict(whole.state_dict())
    loaded = zip(fresh.state_dict().items(), sharded.state_dict().values(), strict=True)
    measured["whole_loads_into_shards_not_equal"] = [key for (key, a), b in loaded if not th.equal(a, b)]
    gathered = gathered_state_dict(sharded, grid.model_group)
    measured["gathered_keys_equal"] = set(gathered) == set(whole.state_dict())
    measured["gathered_not_equal"] = [
        key for key, tensor in whole.state_dict().items() if key not in gathered or not th.equal(gathered[key], tensor.cpu())
    ]
    return measured


if __name__ == "__main__":
    grid = mesh.get(comm.world_size())  # all ranks: one model group
    results = [check(case, dtype, grid) for case in CASES for dtype in (th.float64, th.float32)]
    report(sys.argv[1], "exactness", results=results)
