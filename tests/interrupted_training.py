"""One interruption of a group's training, for the resume tests: the group is stopped right after
its first checkpoint is written, then trained again from that checkpoint."""

import pytest

import encoder_study.training.engine as E


def stop_then_resume(configs, X, checkpoint, checkpoint_every: int, monkeypatch) -> list:
    """Train ``configs`` on X until the first checkpoint is saved (then interrupted), and resume."""
    real = E.save_tree

    def save_then_stop(obj, path):
        real(obj, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "save_tree", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        E.train_group(configs, X, checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=False)
    monkeypatch.setattr(E, "save_tree", real)
    return E.train_group(configs, X, checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=False)
