"""The MPI helpers are free no-ops with one process; the gradient buffer keeps grads as views of one array."""

import os

import numpy as np
import pytest
import torch as th

from sb3_parallel_dqn import mpi_tools
from sb3_parallel_dqn.mpi_pytorch import GradientAverager, check_synced, module_checksum


def test_helpers_without_mpi():
    assert mpi_tools.comm() is None  # pytest does not run under mpirun, and nothing imported mpi4py.MPI
    assert (mpi_tools.rank(), mpi_tools.world_size(), mpi_tools.local_rank(), mpi_tools.is_root()) == (0, 1, 0, True)
    assert mpi_tools.compute_local_rank() == 0 and mpi_tools.allgather_object({"a": 1}) == [{"a": 1}]
    array = np.arange(3.0)
    assert mpi_tools.allreduce_sum_(array) is array and array.tolist() == [0.0, 1.0, 2.0]
    assert mpi_tools.allgather(np.array([4, 5])).tolist() == [[4, 5]]
    assert mpi_tools.broadcast_(array) is array
    assert mpi_tools.broadcast_object({"a": 1}) == {"a": 1}


def test_launcher_env_is_hidden_for_good_but_remembered(monkeypatch):
    """Once hidden, the launcher's variables reach no child process, while the package still reads its own copy."""
    for key, value in {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "HOME_LIKE_VAR": "kept"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(mpi_tools, "_LAUNCHER_ENV", {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"})
    mpi_tools.hide_launcher_env()
    assert not {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"} & set(os.environ) and os.environ["HOME_LIKE_VAR"] == "kept"
    assert (mpi_tools.launcher_rank(), mpi_tools.launcher_world_size()) == (1, 2)
    assert mpi_tools.launched_by_mpi()


def test_env_workers_never_count_as_launched(monkeypatch):
    """A worker that inherited the launcher's variables must not try to join the job (it would crash in MPI_Init)."""
    monkeypatch.setattr(mpi_tools, "_LAUNCHER_ENV", {"PMI_SIZE": "2"})
    assert mpi_tools.launched_by_mpi()
    monkeypatch.setattr(mpi_tools.mp.current_process(), "name", "SpawnProcess-1")  # as while a worker imports __main__
    assert not mpi_tools.launched_by_mpi()


def _net_and_loss():
    th.manual_seed(0)
    net = th.nn.Sequential(th.nn.Linear(4, 8), th.nn.ReLU(), th.nn.Linear(8, 2))
    loss = net(th.randn(5, 4)).pow(2).mean()
    return net, loss


def test_gradient_averager_keeps_grads_in_one_buffer():
    net, loss = _net_and_loss()
    reference_net, reference_loss = _net_and_loss()
    reference_loss.backward()

    averager = GradientAverager(net.parameters())
    assert averager.n_floats == sum(p.numel() for p in net.parameters()) + 1  # + the loss slot
    averager.zero_grad()
    loss.backward()
    assert averager.average_(loss) == pytest.approx(loss.item())
    offset = 0
    for param, reference in zip(net.parameters(), reference_net.parameters(), strict=True):
        # autograd accumulated straight into the shared buffer
        assert param.grad.data_ptr() == averager.buffer[offset:].data_ptr()
        assert th.equal(param.grad, reference.grad)
        offset += param.numel()


def test_gradient_averager_recovers_from_set_to_none():
    net, loss = _net_and_loss()
    averager = GradientAverager(net.parameters())
    th.optim.SGD(net.parameters(), lr=0.1).zero_grad(set_to_none=True)  # drops the views
    loss.backward()
    expected = [p.grad.clone() for p in net.parameters()]
    averager.average_(loss)
    for param, grad in zip(net.parameters(), expected, strict=True):
        assert th.equal(param.grad, grad)
    averager.zero_grad()
    assert all(float(p.grad.abs().sum()) == 0 for p in net.parameters())
    assert averager.pop_mean_sync_ms() is not None and averager.pop_mean_sync_ms() is None


def test_gradient_averager_refuses_other_dtypes():
    with pytest.raises(TypeError, match="float32"):
        GradientAverager(th.nn.Linear(2, 2).double().parameters())


def test_checksum_sees_any_bit_flip():
    net, _ = _net_and_loss()
    before = module_checksum(net)
    assert module_checksum(net) == before
    with th.no_grad():
        net[0].weight.view(-1)[3] = th.nextafter(net[0].weight.view(-1)[3], th.tensor(1.0))
    assert module_checksum(net) != before
    check_synced(net, n_updates=1)  # one process: nothing to compare, never raises
