"""The MPI helpers are free no-ops with one process; the gradient buffer keeps grads as views of one array."""

import os

import numpy as np
import pytest
import torch as th

from sb3_parallel_dqn.distributed import comm
from sb3_parallel_dqn.distributed.gradients import check_synced, module_checksum
from sb3_parallel_dqn.updates import GradientAverager


def test_helpers_without_mpi():
    assert comm.comm() is None  # pytest does not run under mpirun, and nothing imported mpi4py.MPI
    assert (comm.rank(), comm.world_size(), comm.local_rank(), comm.is_root()) == (0, 1, 0, True)
    assert comm.compute_local_rank() == 0 and comm.allgather_object({"a": 1}) == [{"a": 1}]
    array = np.arange(3.0)
    assert comm.allreduce_sum_(array) is array and array.tolist() == [0.0, 1.0, 2.0]
    assert comm.allgather(np.array([4, 5])).tolist() == [[4, 5]]
    assert comm.broadcast_(array) is array
    assert comm.broadcast_object({"a": 1}) == {"a": 1}


def test_launcher_env_is_hidden_for_good_but_remembered(monkeypatch):
    """Once hidden, the launcher's variables reach no child process, while the package still reads its own copy."""
    for key, value in {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "HOME_LIKE_VAR": "kept"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(comm, "_LAUNCHER_ENV", {"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1"})
    comm.hide_launcher_env()
    assert not {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"} & set(os.environ) and os.environ["HOME_LIKE_VAR"] == "kept"
    assert (comm.launcher_rank(), comm.launcher_world_size()) == (1, 2)
    assert comm.launched_by_mpi()


def test_env_workers_never_count_as_launched(monkeypatch):
    """A worker that inherited the launcher's variables must not try to join the job (it would crash in MPI_Init)."""
    monkeypatch.setattr(comm, "_LAUNCHER_ENV", {"PMI_SIZE": "2"})
    assert comm.launched_by_mpi()
    monkeypatch.setattr(comm.mp.current_process(), "name", "SpawnProcess-1")  # as while a worker imports __main__
    assert not comm.launched_by_mpi()


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


# expected: with the local rank published (1), unknown (rank 3 stands in), computed by the constructor (0)
@pytest.mark.parametrize("n_gpus, expected", [(0, ("auto",) * 3), (1, ("cuda:0",) * 3), (2, ("cuda:1", "cuda:1", "cuda:0"))])
def test_auto_device_uses_the_local_rank_without_a_collective(monkeypatch, n_gpus, expected):
    """
    Rank 3 of 4 on a host where it is local rank 1: "auto" picks cuda:{local rank % n_gpus}. Unknown local rank: the
    global rank stands in, unless the caller may compute it collectively (the constructor). (The real launcher's
    variables and the collective split run under mpirun in test_mpi.py.)
    """
    from sb3_parallel_dqn.distributed.devices import pick_device

    monkeypatch.setattr(th.cuda, "is_available", lambda: n_gpus > 0)
    monkeypatch.setattr(th.cuda, "device_count", lambda: n_gpus)
    monkeypatch.setattr(comm, "world_size", lambda: 4)
    monkeypatch.setattr(comm, "rank", lambda: 3)
    monkeypatch.setattr(comm, "local_rank", lambda: 1)
    assert str(pick_device("auto")) == expected[0] and pick_device("cpu") == "cpu"
    monkeypatch.setattr(comm, "local_rank", lambda: None)  # the launcher published none
    monkeypatch.setattr(comm, "compute_local_rank", lambda: 0)
    assert str(pick_device("auto")) == expected[1]  # no collective allowed: rank 3 stands in
    assert str(pick_device("auto", collective=True)) == expected[2]
