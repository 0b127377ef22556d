"""The Ray executor: groups trained as tasks on a local Ray cluster give the local executor's
numbers bit for bit, land in the run cache, and a group that keeps failing is named while the
others finish."""

import pytest
import torch

ray = pytest.importorskip("ray")

from encoder_study import runs  # noqa: E402
from encoder_study.config import RunConfig  # noqa: E402
from encoder_study.executors import GroupsFailed  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module (starting one takes seconds), with this machine's cores."""
    from encoder_study.executors import ray_started

    ray_started()
    yield
    ray.shutdown()


@pytest.fixture
def tasks(monkeypatch):
    """The number of groups each call of run_experiments sends to the cluster."""
    sent = []
    real = runs.run_ray

    def counting(jobs, *args, **kwargs):
        sent.append(len(jobs))
        return real(jobs, *args, **kwargs)

    monkeypatch.setattr(runs, "run_ray", counting)
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
    # worker (every retry); batch 100 trains
    X = mnist["train_x"][:257]
    good = [RunConfig(seed=s, epochs=1, batch_size=100, device="cpu", hidden_dim=8) for s in (1, 2)]
    bad = [RunConfig(model="sae", seed=1, epochs=1, batch_size=128, device="cpu", hidden_dim=8)]
    with pytest.raises(GroupsFailed, match=r"group 2/2: sae x1: .*last minibatch of one sample") as failed:
        runs.run_experiments(good + bad, X, cache=tmp_path, progress=False, executor="ray")
    assert list(failed.value.failures) == ["group 2/2: sae x1"]
    done = runs.run_experiments(good, X, cache=tmp_path, progress=False, executor="ray")
    assert tasks == [2]  # the good group was cached when it finished: the second call sent nothing
    assert len(done) == 2 and all(r.diverged_epoch is None for r in done)


def test_an_unknown_executor_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCODER_STUDY_EXECUTOR", "slurm")
    with pytest.raises(ValueError, match="executor='slurm' is not allowed; choose one of 'local', 'ray'"):
        runs.run_experiments([RunConfig(epochs=1, device="cpu")], torch.zeros(4, 3), cache=tmp_path)
