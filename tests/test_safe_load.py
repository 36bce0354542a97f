"""
Weights-only loading (``sb3_parallel_dqn.io.safe_load``): only ``policy.pth`` is read, with ``weights_only=True``.

The malicious payloads here are live: each test also shows that the ordinary path (``pickle.loads``, ``torch.load``
without ``weights_only``, ``ParallelDQN.load`` for the ``data`` member) does create the marker file, so that a test
cannot pass because its payload was harmless.
"""

import base64
import io
import json
import pickle
import zipfile

import cloudpickle
import numpy as np
import pytest
import torch as th

from sb3_parallel_dqn import ParallelDQN
from sb3_parallel_dqn.io.safe_load import (
    ModelFileError,
    UnsafeModelFileError,
    load_weights_only,
    read_policy_state_dict,
    set_policy_weights,
)
from sb3_parallel_dqn.zoo import load_weights_only_from_config

NET_ARCH = [16]


class CreatesFile:
    """Unpickling this object creates ``marker``, as a payload that runs ``os.system`` would: ``open(marker, "w")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def rewrite_zip(source, destination, replace=None, drop=()):
    """Copy a zip member by member, with some members' bytes replaced (or added) and some left out."""
    replace = replace or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(destination, "w") as dst:
        for name in src.namelist():
            if name not in drop and name not in replace:
                dst.writestr(name, src.read(name))
        for name, payload in replace.items():
            dst.writestr(name, payload)
    return destination


def torch_bytes(obj):
    buffer = io.BytesIO()
    th.save(obj, buffer)
    return buffer.getvalue()


def malicious_data_member(model_zip, marker):
    """The model's ``data`` JSON with one more entry: a cloudpickle payload, as SB3 stores schedules and classes."""
    with zipfile.ZipFile(model_zip) as archive:
        data = json.loads(archive.read("data"))
    payload = base64.b64encode(cloudpickle.dumps(CreatesFile(marker))).decode()
    data["innocent_looking_schedule"] = {":type:": "<class 'function'>", ":serialized:": payload}
    return json.dumps(data).encode()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A briefly trained model (its weights are no longer the initial ones) and its file."""
    model = ParallelDQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": NET_ARCH}, learning_starts=50, seed=0)
    model.learn(300)
    path = tmp_path_factory.mktemp("model") / "cartpole.zip"
    model.save(path)
    return model, path


def observations(n=64):
    return np.random.default_rng(0).uniform(-0.3, 0.3, size=(n, 4)).astype(np.float32)


def assert_same_weights(model, other):
    expected, loaded = model.policy.state_dict(), other.policy.state_dict()
    assert list(expected) == list(loaded)
    for key in expected:
        assert th.equal(expected[key], loaded[key]), key
    np.testing.assert_array_equal(model.predict(observations(), deterministic=True)[0],
                                  other.predict(observations(), deterministic=True)[0])  # fmt: skip


def test_round_trip(saved):
    model, path = saved
    fresh = ParallelDQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": NET_ARCH}, seed=1)
    # a freshly built model differs before loading, so the comparison below can fail
    assert not th.equal(fresh.policy.state_dict()["q_net.q_net.0.weight"], model.policy.state_dict()["q_net.q_net.0.weight"])
    loaded = load_weights_only(path, "CartPole-v1", policy_kwargs={"net_arch": NET_ARCH})
    assert_same_weights(model, loaded)
    # the saved exploration rate is in ``data``; the weights-only model gets the schedule's end, as a finished model
    assert loaded.exploration_rate == pytest.approx(model.exploration_final_eps)
    assert loaded.num_timesteps == 0  # counters live in ``data``, which is not read


def test_set_policy_weights_in_place(saved):
    model, path = saved
    fresh = ParallelDQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": NET_ARCH}, seed=1)
    set_policy_weights(fresh, path)
    assert_same_weights(model, fresh)
    wider = ParallelDQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [32]}, seed=1)
    before = {key: value.clone() for key, value in wider.policy.state_dict().items()}
    with pytest.raises(ModelFileError, match=r"'q_net\.q_net\.0\.weight' has shape"):
        set_policy_weights(wider, path)
    assert all(th.equal(before[key], value) for key, value in wider.policy.state_dict().items())  # left untouched


def test_round_trip_from_zoo_config(saved, tmp_path):
    model, path = saved
    conf = tmp_path / "dqn.yml"
    conf.write_text("CartPole-v1:\n  policy: 'MlpPolicy'\n  policy_kwargs: 'dict(net_arch=[16])'\n  buffer_size: 1000\n")
    loaded, env = load_weights_only_from_config(path, "CartPole-v1", conf, seed=0)
    try:
        assert_same_weights(model, loaded)
        assert env.num_envs == 1 and env.observation_space == loaded.observation_space
    finally:
        env.close()


def test_from_config_refuses_normalize_without_trusted_statistics(saved, tmp_path):
    _, path = saved
    conf = tmp_path / "dqn.yml"
    conf.write_text("CartPole-v1:\n  policy_kwargs: 'dict(net_arch=[16])'\n  normalize: true\n")
    with pytest.raises(ValueError, match=r"key 'normalize'.*vecnormalize.pkl\) are a pickle"):
        load_weights_only_from_config(path, "CartPole-v1", conf)


@pytest.mark.parametrize("container", ["raw pickle", "torch.save"])
def test_malicious_policy_pth_is_refused_without_running_it(saved, tmp_path, container):
    _, path = saved
    marker = tmp_path / "pwned"
    evil = CreatesFile(marker)
    # Protocol 2 is what torch writes; a newer one would be refused for its protocol, before the object is reached.
    payload = pickle.dumps({"q_net.q_net.0.weight": evil}, protocol=2) if container == "raw pickle" else torch_bytes(evil)
    evil_zip = rewrite_zip(path, tmp_path / "evil.zip", replace={"policy.pth": payload})

    with pytest.raises(UnsafeModelFileError, match=r"policy.pth holds pickled objects.*GLOBAL"):
        load_weights_only(evil_zip, "CartPole-v1", policy_kwargs={"net_arch": NET_ARCH})
    assert not marker.exists()

    # The payload is live: an unrestricted unpickler runs it.
    if container == "raw pickle":
        pickle.loads(payload)["q_net.q_net.0.weight"].close()
    else:
        th.load(io.BytesIO(payload), weights_only=False).close()
    assert marker.exists()


@pytest.mark.parametrize("data", ["malicious", "missing", "garbage"])
def test_data_member_is_never_read(saved, tmp_path, data):
    model, path = saved
    marker = tmp_path / "pwned"
    if data == "malicious":
        target = rewrite_zip(path, tmp_path / "evil.zip", replace={"data": malicious_data_member(path, marker)})
    elif data == "missing":
        target = rewrite_zip(path, tmp_path / "nodata.zip", drop=("data",))
    else:
        target = bad_file("data not JSON", path, tmp_path)

    loaded = load_weights_only(target, "CartPole-v1", policy_kwargs={"net_arch": NET_ARCH})
    assert_same_weights(model, loaded)
    assert not marker.exists()

    if data == "malicious":
        # SB3's load unpickles ``data`` and runs the payload: the reason this module exists.
        ParallelDQN.load(target).innocent_looking_schedule.close()
        assert marker.exists()


@pytest.mark.parametrize(
    "net_arch, message",
    [
        ([32], r"'q_net.q_net.0.weight' has shape \(16, 4\) in policy.pth but \(32, 4\) in the built policy"),
        ([16, 16], r"'q_net.q_net.2.weight' has shape \(2, 16\) in policy.pth but \(16, 16\) in the built policy"),
    ],
)
def test_architecture_mismatch_names_key_and_shapes(saved, net_arch, message):
    _, path = saved
    with pytest.raises(ModelFileError, match=message + r".*policy_kwargs"):
        load_weights_only(path, "CartPole-v1", policy_kwargs={"net_arch": net_arch})


def test_env_mismatch_shows_as_shape_mismatch(saved):
    _, path = saved
    with pytest.raises(ModelFileError, match=r"\(16, 4\) in policy.pth but \(16, 6\) in the built policy"):
        load_weights_only(path, "Acrobot-v1", policy_kwargs={"net_arch": NET_ARCH})


@pytest.mark.parametrize("edit", ["missing key", "extra key"])
def test_state_dict_keys_must_match_exactly(saved, tmp_path, edit):
    model, path = saved
    state = dict(model.policy.state_dict())
    if edit == "missing key":
        del state["q_net_target.q_net.2.bias"]
        message = r"policy.pth has no 'q_net_target.q_net.2.bias', which the built policy has"
    else:
        state["q_net.q_net.4.weight"] = th.zeros(2, 2)
        message = r"policy.pth has 'q_net.q_net.4.weight', which the built policy does not have"
    edited = rewrite_zip(path, tmp_path / "edited.zip", replace={"policy.pth": torch_bytes(state)})
    with pytest.raises(ModelFileError, match=message):
        load_weights_only(edited, "CartPole-v1", policy_kwargs={"net_arch": NET_ARCH})


def bad_file(kind, path, tmp_path):
    """A damaged copy of the model file ``path``."""
    bad = tmp_path / f"{kind.replace(' ', '_')}.zip"
    content = path.read_bytes()
    if kind == "text":
        bad.write_text("not a zip")
    elif kind == "truncated":
        bad.write_bytes(content[: len(content) // 2])
    elif kind == "damaged member":
        # One byte of policy.pth's data flipped (SB3 stores members uncompressed): its CRC no longer matches.
        with zipfile.ZipFile(path) as archive:
            start = content.find(archive.read("policy.pth"))
        assert start > 0
        damaged = bytearray(content)
        damaged[start + 100] ^= 0xFF
        bad.write_bytes(bytes(damaged))
    elif kind == "no policy.pth":
        rewrite_zip(path, bad, drop=("policy.pth",))
    elif kind == "junk policy.pth":
        rewrite_zip(path, bad, replace={"policy.pth": b"\x00" * 64})
    elif kind == "not a state_dict":
        rewrite_zip(path, bad, replace={"policy.pth": torch_bytes([1, 2])})
    elif kind == "data not JSON":
        rewrite_zip(path, bad, replace={"data": b"{not json"})
    else:
        raise ValueError(kind)
    return bad


@pytest.mark.parametrize(
    "kind, message",
    [
        ("text", "not a zip file"),
        ("truncated", "not a zip file, or a truncated"),
        ("damaged member", r"damaged one \(Bad CRC-32 for file 'policy.pth'\)"),
        ("no policy.pth", "no policy.pth in the zip"),
        ("junk policy.pth", "policy.pth is not a"),
        ("not a state_dict", "not a state_dict of tensors"),
    ],
)
def test_corrupt_files_give_a_clear_error(saved, tmp_path, kind, message):
    _, path = saved
    bad = bad_file(kind, path, tmp_path)
    with pytest.raises(ModelFileError, match=message) as info:
        read_policy_state_dict(bad)
    assert str(bad) in str(info.value) and not isinstance(info.value, UnsafeModelFileError)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        read_policy_state_dict(tmp_path / "nothere.zip")
