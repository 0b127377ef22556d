"""The Ray executor: groups trained as tasks on a local Ray cluster give the local executor's
numbers bit for bit, land in the run cache, and a group that keeps failing is named while the
others finish; a cluster address that does not answer is named within the stated timeout."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from encoder_study.models.config import RunConfig  # noqa: E402
from encoder_study.training import executors, runs  # noqa: E402
from encoder_study.training.executors import GroupsFailed  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (starting one takes seconds), with this machine's cores."""
    from encoder_study.training.executors import ray_started

    ray_started()
    yield
    ray.shutdown()


@pytest.fixture
def tasks(monkeypatch):
    """The number of groups each call of run_experiments sends to the cluster."""
    sent = []
    real = executors.train_on_ray

    def counting(jobs, *args, **kwargs):
        sent.append(len(jobs))
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(executors, "train_on_ray", counting)
    return sent


def _configs():
    base = dict(epochs=2, batch_size=64, device="cpu", hidden_dim=16)
    return [
        RunConfig(seed=1, **base),
        RunConfig(seed=2, lr=3e-3, **base),
        RunConfig(model="sae", seed=1, **base),
    ]


def test_ray_gives_the_local_numbers_and_a_second_run_starts_no_task(mnist, tmp_path, cluster, tasks):
    X, Xt = mnist["train_x"][:640], mnist["test_x"][:200]
    local = runs.run_experiments(_configs(), X, Xt, cache=tmp_path / "local", progress=False)
    remote = runs.run_experiments(_configs(), X, Xt, cache=tmp_path / "ray", progress=False, executor="ray")
    assert tasks == [2]  # two groups (encoder x2, sae x1), one task each
    for a, b in zip(local, remote):
        assert a.config == b.config
        assert all(torch.equal(a.state[n], b.state[n]) for n in a.state), a.config  # same machine and threads
        assert [{k: v for k, v in h.items() if k != "seconds"} for h in a.history] == [
            {k: v for k, v in h.items() if k != "seconds"} for h in b.history
        ]
    again = runs.run_experiments(_configs(), X, Xt, cache=tmp_path / "ray", progress=False, executor="ray")
    assert tasks == [2]  # everything came from the run cache: no task, no call to the cluster
    assert all(torch.equal(a.state[n], b.state[n]) for a, b in zip(remote, again) for n in a.state)


def test_a_group_that_keeps_failing_is_named_and_the_others_are_cached(mnist, tmp_path, cluster, tasks):
    # 257 samples: batch 128 leaves a last minibatch of one sample, which the engine refuses in the
    # worker (every retry) for ours, whose loss takes a variance over each minibatch; batch 100 trains
    X = mnist["train_x"][:257]
    good = [RunConfig(seed=s, epochs=1, batch_size=100, device="cpu", hidden_dim=8) for s in (1, 2)]
    bad = [RunConfig(seed=1, epochs=1, batch_size=128, device="cpu", hidden_dim=8)]
    with pytest.raises(GroupsFailed, match=r"group 2/2: encoder x1: .*last minibatch of 1 sample") as failed:
        runs.run_experiments(good + bad, X, cache=tmp_path, progress=False, executor="ray")
    assert list(failed.value.failures) == ["group 2/2: encoder x1"]
    done = runs.run_experiments(good, X, cache=tmp_path, progress=False, executor="ray")
    assert tasks == [2]  # the good group was cached when it finished: the second call sent nothing
    assert len(done) == 2 and all(r.diverged_epoch is None for r in done)


def test_an_unknown_executor_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCODER_STUDY_EXECUTOR", "slurm")
    with pytest.raises(ValueError, match="executor='slurm' is not allowed; choose one of 'local', 'ray'"):
        runs.run_experiments([RunConfig(epochs=1, device="cpu")], torch.zeros(4, 3), cache=tmp_path)


# Connecting to a cluster at ENCODER_STUDY_RAY_ADDRESS gives up after ENCODER_STUDY_RAY_TIMEOUT
# seconds with an error naming the address; none of these tests starts a cluster.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def not_connected(monkeypatch):
    """ray_started as in a fresh process (even while the module's cluster runs); ray.init refused
    unless a test replaces it."""
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail(f"ray.init was called: {kwargs}"))
    monkeypatch.setattr(executors, "_pending_connect", None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_an_address_where_nothing_listens_is_named_at_once(monkeypatch, not_connected):
    address = f"127.0.0.1:{_free_port()}"
    monkeypatch.setenv("ENCODER_STUDY_RAY_ADDRESS", address)
    monkeypatch.setenv("ENCODER_STUDY_RAY_TIMEOUT", "3")
    start = time.monotonic()
    with pytest.raises(ConnectionError) as error:
        executors.ray_started()
    assert time.monotonic() - start < 3  # a closed port is refused at once; ray.init is never called
    message = str(error.value)
    assert f"ENCODER_STUDY_RAY_ADDRESS='{address}'" in message and "cannot be reached" in message
    assert "timeout 3 s, ENCODER_STUDY_RAY_TIMEOUT" in message and "ray start --head --port=6379" in message


def test_a_port_that_is_no_cluster_times_out_and_a_retry_waits_for_the_first_attempt(
    monkeypatch, not_connected
):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        release = threading.Event()
        monkeypatch.setattr(ray, "init", lambda **kwargs: release.wait(30))  # a GCS that never answers
        monkeypatch.setenv("ENCODER_STUDY_RAY_ADDRESS", address)
        monkeypatch.setenv("ENCODER_STUDY_RAY_TIMEOUT", "1")
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="no Ray cluster answered within 1 s") as error:
            executors.ray_started()
        assert 0.9 < time.monotonic() - start < 5
        assert address in str(error.value) and "ray start --head --port=6379" in str(error.value)
        with pytest.raises(ConnectionError, match=f"earlier attempt to connect .* at '{address}'"):
            executors.ray_started()  # the first attempt still runs: not a second ray.init beside it
        release.set()
        executors._pending_connect[1].join(5)


def test_ray_init_on_a_port_that_is_no_cluster_gives_up_and_the_process_exits(tmp_path):
    # the real ray.init (no stand-in), in its own process: it would retry for many minutes
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        env = {
            **os.environ,
            "ENCODER_STUDY_RAY_ADDRESS": address,
            "ENCODER_STUDY_RAY_TIMEOUT": "2",
            "RAY_ADDRESS": "",
        }
        start = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", "from encoder_study.training.executors import ray_started; ray_started()"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode != 0
    assert "ConnectionError" in out.stderr and "no Ray cluster answered within 2 s" in out.stderr
    assert address in out.stderr
    assert time.monotonic() - start < 60  # imports, two seconds of waiting, and a prompt exit


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf"])
def test_the_timeout_must_be_a_positive_number(monkeypatch, not_connected, value):
    monkeypatch.setenv("ENCODER_STUDY_RAY_ADDRESS", f"127.0.0.1:{_free_port()}")
    monkeypatch.setenv("ENCODER_STUDY_RAY_TIMEOUT", value)
    with pytest.raises(
        ValueError, match=f"ENCODER_STUDY_RAY_TIMEOUT='{value}' is not allowed; give a positive"
    ):
        executors.ray_started()


def test_the_timeout_defaults_to_a_minute(monkeypatch):
    monkeypatch.delenv("ENCODER_STUDY_RAY_TIMEOUT", raising=False)
    assert executors.ray_timeout() == 60
    monkeypatch.setenv("ENCODER_STUDY_RAY_TIMEOUT", "2.5")
    assert executors.ray_timeout() == 2.5


@pytest.mark.parametrize("address", ["10.0.0.5", "10.0.0.5:port", "ray://"])
def test_an_address_without_a_port_is_named(monkeypatch, not_connected, address):
    monkeypatch.setenv("ENCODER_STUDY_RAY_ADDRESS", address)
    with pytest.raises(ValueError, match=f"ENCODER_STUDY_RAY_ADDRESS='{address}' is not an address"):
        executors.ray_started()
