"""The flat-buffer update and the up-front replay sampling are SB3's update and sampling, bit for bit."""

import copy
import inspect

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import NStepReplayBuffer, ReplayBuffer

from sb3_parallel_dqn.engine.sampling import sample_batches
from sb3_parallel_dqn.updates import FlatUpdate, flat_adam_supported

# Adam's decoupled_weight_decay (AdamW's update), from torch 2.7 on.
DECOUPLED = {"decoupled_weight_decay": True} if "decoupled_weight_decay" in inspect.signature(th.optim.Adam).parameters else {}


def _net() -> th.nn.Module:
    th.manual_seed(0)
    return th.nn.Sequential(th.nn.Linear(4, 64), th.nn.ReLU(), th.nn.Linear(64, 64), th.nn.ReLU(), th.nn.Linear(64, 2))


def _loss(net: th.nn.Module, step: int) -> th.Tensor:
    generator = th.Generator().manual_seed(step)
    inputs, targets = th.randn(32, 4, generator=generator), th.randn(32, 2, generator=generator)
    # Large targets now and then, so that clipping is active on some steps and not on others.
    return ((net(inputs) - targets * (1 + 50 * (step % 3 == 0))) ** 2).mean()


def _assert_same_state(reference: tuple[th.nn.Module, th.optim.Optimizer], ours: tuple[th.nn.Module, th.optim.Optimizer]):
    for (name, a), b in zip(reference[0].state_dict().items(), ours[0].state_dict().values(), strict=True):
        assert th.equal(a, b), name
    ref_state, our_state = reference[1].state_dict(), ours[1].state_dict()
    assert ref_state["param_groups"] == our_state["param_groups"]
    assert ref_state["state"].keys() == our_state["state"].keys()
    for index, state in ref_state["state"].items():
        assert state.keys() == our_state["state"][index].keys()
        for key, value in state.items():
            assert th.equal(value, our_state["state"][index][key]), (index, key)
            assert value.shape == our_state["state"][index][key].shape


@pytest.mark.parametrize(
    ("optimizer_class", "kwargs", "flat_adam"),
    [
        (th.optim.Adam, {"lr": 2.3e-3}, True),
        (th.optim.Adam, {"lr": 1e-3, "eps": 1e-5, "weight_decay": 1e-4}, True),
        (th.optim.Adam, {"lr": 1e-3, "foreach": True}, True),  # torch's foreach Adam over one flat tensor
        (th.optim.Adam, {"lr": 1e-3, "maximize": True, "weight_decay": 1e-2, **DECOUPLED}, True),
        (th.optim.Adam, {"lr": 1e-3, "fused": True}, False),
        (th.optim.Adam, {"lr": 1e-3, "amsgrad": True}, False),  # not on the flat path: optimizer.step()
        (th.optim.RMSprop, {"lr": 1e-3}, False),
    ],
)
def test_flat_update_is_clip_grad_norm_and_optimizer_step(optimizer_class, kwargs, flat_adam):
    reference_net = _net()
    reference = reference_net, optimizer_class(reference_net.parameters(), **kwargs)
    net = copy.deepcopy(reference_net)
    optimizer = optimizer_class(net.parameters(), **kwargs)
    update = FlatUpdate(list(net.parameters()), optimizer)
    assert update.flat_adam is flat_adam
    clipped = []
    for step in range(60):
        if step == 30:  # as SB3's learning-rate schedule does between train() calls
            for group in (*reference[1].param_groups, *optimizer.param_groups):
                group["lr"] = 0.5 * group["lr"]
        reference[1].zero_grad()
        _loss(reference_net, step).backward()
        expected_norm = th.nn.utils.clip_grad_norm_(reference_net.parameters(), 10)
        reference[1].step()

        update.zero_grad()
        _loss(net, step).backward()
        norm = update.clip_grad_norm_(10)
        update.step()
        assert th.equal(norm, expected_norm)
        clipped.append(float(norm) > 10)
        if step % 20 == 19:
            update.end_updates()
            _assert_same_state(reference, (net, optimizer))
            update.attach()
    assert any(clipped) and not all(clipped)  # both branches of the clip were exercised


def test_flat_update_keeps_the_optimizer_state_format_and_reattaches_after_load():
    net = _net()
    optimizer = th.optim.Adam(net.parameters(), lr=1e-3)
    update = FlatUpdate(list(net.parameters()), optimizer)
    for step in range(5):
        update.zero_grad()
        _loss(net, step).backward()
        update.clip_grad_norm_(10)
        update.step()
    update.end_updates()
    # Parameters and moments are views of the flat buffers...
    assert net[0].weight.data_ptr() == update.param_buffer.data_ptr()
    assert optimizer.state[net[0].weight]["exp_avg"].data_ptr() == update.exp_avg_buffer.data_ptr()
    assert [float(optimizer.state[p]["step"]) for p in net.parameters()] == [5.0] * 6
    # ...and a state loaded from elsewhere (as load() / set_parameters do) replaces them: attach() copies it back in.
    other_net = _net()
    other = th.optim.Adam(other_net.parameters(), lr=1e-3)
    for step in range(3):
        other.zero_grad()
        _loss(other_net, 100 + step).backward()
        other.step()
    optimizer.load_state_dict(other.state_dict())
    net.load_state_dict(other_net.state_dict())
    net.zero_grad(set_to_none=True)
    update.attach()
    assert float(update.step_count) == 3.0
    assert optimizer.state[net[0].weight]["exp_avg"].data_ptr() == update.exp_avg_buffer.data_ptr()
    for step in range(4):
        other.zero_grad()
        _loss(other_net, 200 + step).backward()
        th.nn.utils.clip_grad_norm_(other_net.parameters(), 10)
        other.step()
        update.zero_grad()
        _loss(net, 200 + step).backward()
        update.clip_grad_norm_(10)
        update.step()
    update.end_updates()
    _assert_same_state((other_net, other), (net, optimizer))


def test_flat_adam_needs_one_group_over_exactly_these_parameters():
    net = _net()
    parameters = list(net.parameters())
    assert flat_adam_supported(th.optim.Adam(parameters), parameters)
    assert not flat_adam_supported(th.optim.Adam(parameters[:2]), parameters)
    assert not flat_adam_supported(th.optim.Adam([{"params": parameters[:2]}, {"params": parameters[2:]}]), parameters)
    assert flat_adam_supported(th.optim.Adam(parameters, foreach=True), parameters)
    assert not flat_adam_supported(th.optim.Adam(parameters, fused=True), parameters)
    assert not flat_adam_supported(th.optim.AdamW(parameters), parameters)


def test_the_flat_path_is_public_torch_only():
    """A stock Adam over the flat parameter buffer (its .grad the flat gradient buffer), no functional internals."""
    net = _net()
    optimizer = th.optim.Adam(net.parameters(), lr=1e-3)
    update = FlatUpdate(list(net.parameters()), optimizer)
    flat = update.flat_optimizer.optimizer
    assert type(flat) is th.optim.Adam and flat.param_groups[0]["params"] == [update.param_buffer]
    assert update.param_buffer.grad is not None and update.param_buffer.grad.data_ptr() == update.grad_buffer.data_ptr()
    assert flat.param_groups[0]["foreach"] is False  # Adam's own choice on CPU, as for SB3's per-tensor optimizer
    state = flat.state[update.param_buffer]
    assert state["exp_avg"] is update.exp_avg_buffer and state["step"] is update.step_count


@pytest.mark.parametrize("kwargs", [{}, {"foreach": True}])
def test_adam_over_one_flat_tensor_is_adam_over_the_tensors(kwargs):
    """
    Adam over one flat tensor vs over the separate tensors, on float32 CPU, bit for bit: the single-tensor and the
    foreach kernels are elementwise at any tensor boundary (sizes here are no multiple of a SIMD width, and one is
    large). torch's fused CPU kernel is not: with these tensors one element of 800,000 differed after 50 steps
    (torch 2.13), which is why flat_adam_supported refuses fused=True. CUDA was not checked.
    """
    th.manual_seed(1)
    reference = [th.nn.Parameter(th.randn(*shape)) for shape in ((5, 7), (3,), (256, 3136), (18,))]
    ref_optimizer = th.optim.Adam(reference, lr=1e-2, **kwargs)
    flat = th.cat([p.detach().reshape(-1) for p in reference])
    flat_optimizer = th.optim.Adam([flat], lr=1e-2, **kwargs)
    for step in range(50):
        generator = th.Generator().manual_seed(step)
        grads = [th.randn(p.shape, generator=generator) * 10.0 ** (step % 5 - 2) for p in reference]
        for p, grad in zip(reference, grads, strict=True):
            p.grad = grad
        flat.grad = th.cat([grad.reshape(-1) for grad in grads])
        ref_optimizer.step()
        flat_optimizer.step()
    assert th.equal(th.cat([p.detach().reshape(-1) for p in reference]), flat)


def _filled_buffer(n_envs: int, optimize_memory_usage: bool, full: bool, n_steps: int = 1) -> ReplayBuffer:
    observation_space = spaces.Box(-1, 1, (3,), dtype=np.float32)
    kwargs = {"n_steps": n_steps, "gamma": 0.9} if n_steps > 1 else {}
    buffer = (NStepReplayBuffer if n_steps > 1 else ReplayBuffer)(
        50,
        observation_space,
        spaces.Discrete(4),
        n_envs=n_envs,
        optimize_memory_usage=optimize_memory_usage,
        handle_timeout_termination=not optimize_memory_usage,  # SB3 refuses both together
        **kwargs,
    )
    rng = np.random.default_rng(0)
    for _ in range(80 if full else 12):  # SB3 keeps 50 // n_envs transitions per env
        obs = rng.random((n_envs, 3), dtype=np.float32)
        buffer.add(
            obs,
            obs + 1,
            rng.integers(0, 4, size=(n_envs, 1)),
            rng.random(n_envs, dtype=np.float32),
            rng.random(n_envs) < 0.2,
            [{"TimeLimit.truncated": bool(flag)} for flag in rng.random(n_envs) < 0.3],
        )
    assert buffer.full == full
    return buffer


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize(("optimize_memory_usage", "n_steps"), [(False, 1), (True, 1), (False, 3)])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("max_gather_bytes", [None, 1])
def test_sample_batches_are_sb3_samples(n_envs, optimize_memory_usage, n_steps, full, max_gather_bytes, monkeypatch):
    if max_gather_bytes is not None:  # one gather per step instead of one for all
        monkeypatch.setattr("sb3_parallel_dqn.engine.sampling.MAX_GATHER_BYTES", max_gather_bytes)
    buffer = _filled_buffer(n_envs, optimize_memory_usage, full, n_steps)
    np.random.seed(7)
    expected = [buffer.sample(16) for _ in range(5)]
    expected_next_draw = np.random.randint(1 << 30)
    np.random.seed(7)
    batches = list(sample_batches(buffer, 5, 16))
    assert np.random.randint(1 << 30) == expected_next_draw  # same generator state afterwards
    assert len(batches) == 5
    for ours, theirs in zip(batches, expected, strict=True):
        assert (ours.discounts is None) == (theirs.discounts is None) == (n_steps == 1)
        for a, b in zip(ours, theirs, strict=True):
            if b is None:
                continue
            assert a.dtype == b.dtype and a.shape == b.shape
            assert th.equal(a, b)


def test_make_update_picks_the_update_the_settings_ask_for():
    """One process: the flat path under SB3's Adam, SB3's own eager path where the flat one would not be bit-exact."""
    from sb3_parallel_dqn.distributed import mesh
    from sb3_parallel_dqn.updates import EagerUpdate, make_update

    net = th.nn.Linear(3, 2)
    grid = mesh.get(1)
    assert type(make_update(list(net.parameters()), th.optim.Adam(net.parameters()), grid)) is FlatUpdate
    fused = th.optim.Adam(net.parameters(), fused=True)
    assert type(make_update(list(net.parameters()), fused, grid)) is EagerUpdate
    assert type(make_update(list(net.parameters()), th.optim.SGD(net.parameters(), lr=0.1), grid)) is EagerUpdate


def test_the_eager_update_is_sb3s_train():
    """An optimizer the flat path cannot take (SGD) trains bit for bit as SB3's DQN."""
    from stable_baselines3 import DQN

    from sb3_parallel_dqn import ParallelDQN

    kwargs = dict(learning_starts=50, batch_size=16, train_freq=4, seed=0,
                  policy_kwargs=dict(net_arch=[16], optimizer_class=th.optim.SGD))  # fmt: skip
    sb3 = DQN("MlpPolicy", "CartPole-v1", **kwargs).learn(400)
    ours = ParallelDQN("MlpPolicy", "CartPole-v1", **kwargs).learn(400)
    assert type(ours._learner.update).__name__ == "EagerUpdate"
    for a, b in zip(sb3.policy.state_dict().values(), ours.policy.state_dict().values(), strict=True):
        assert th.equal(a, b)
