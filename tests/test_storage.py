"""The cache and checkpoint files: nothing read from disk can run code, writes never follow a
link, damaged files are kept aside, every written file gets one mode."""

from __future__ import annotations

import os
import pickle
import stat

import pytest
import torch

from encoder_study.book import storage
from encoder_study.models.config import RunConfig
from encoder_study.training.engine import train_group
from encoder_study.training.runs import run_experiments


class _Planted:
    """A pickle that, when loaded, writes a marker file: what an attacker would plant."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _cfg(**kw) -> list[RunConfig]:
    return [RunConfig(seed=1, epochs=kw.pop("epochs", 1), hidden_dim=4, batch_size=64, device="cpu", **kw)]


def test_a_tree_round_trips_with_its_types_and_values(tmp_path):
    tree = {
        "w": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "empty": torch.zeros(0, 4),
        "flags": torch.tensor([True, False]),
        "history": [{"epoch": 1, "total": -1.5, "nan": float("nan"), "note": None, "ok": True}],
        "pair": (3, "x"),
    }
    storage.save_tree(tree, tmp_path / "t.safetensors")
    back = storage.load_tree(tmp_path / "t.safetensors")
    assert torch.equal(back["w"], tree["w"]) and back["w"].dtype == torch.float64
    assert back["empty"].shape == (0, 4) and torch.equal(back["flags"], tree["flags"])
    h = back["history"][0]
    assert h["epoch"] == 1 and h["total"] == -1.5 and h["nan"] != h["nan"] and h["note"] is None and h["ok"]
    assert back["pair"] == [3, "x"]  # tuples come back as lists


def test_a_tree_refuses_what_it_cannot_store_by_where_it_is(tmp_path):
    with pytest.raises(TypeError, match=r"obj\.a\[1\]: a object"):
        storage.save_tree({"a": [1, object()]}, tmp_path / "x")
    with pytest.raises(TypeError, match="keys must be strings"):
        storage.save_tree({"a": {1: 2}}, tmp_path / "x")
    assert not list(tmp_path.iterdir())


def test_a_planted_pickle_in_the_run_cache_never_runs(tmp_path, recwarn):
    X = torch.rand(256, 12)
    cfg = _cfg()
    run_experiments(cfg, X, cache=tmp_path, progress=False)
    (path,) = tmp_path.glob("*.safetensors")
    marker = tmp_path / "pwned"
    planted = pickle.dumps(_Planted(str(marker)))
    path.write_bytes(planted)  # in place of the finished group
    (tmp_path / "old.pt").write_bytes(planted)  # and as a file of the old format
    run_experiments(cfg, X, cache=tmp_path, progress=False)
    assert not marker.exists()
    messages = " ".join(str(w.message) for w in recwarn)
    assert "1 file(s) of an earlier version" in messages and "never read" in messages
    (kept,) = tmp_path.glob("*.unreadable-*")
    assert kept.read_bytes() == planted and kept.name in messages  # kept for inspection, named


def test_a_planted_pickle_as_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    ck = tmp_path / "g.partial.safetensors"
    ck.write_bytes(pickle.dumps(_Planted(str(marker))))
    with pytest.warns(UserWarning, match="checkpoint"):
        train_group(_cfg(), torch.rand(128, 12), checkpoint=ck, progress=False)
    assert not marker.exists()


def test_a_file_of_another_safetensors_layout_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="format None"):
        storage.load_tree(path)


def test_writes_replace_a_planted_link_and_never_write_through_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "out.json"
    link.symlink_to(victim)
    storage.write_atomic(link, "new")
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "new"


def test_every_written_file_gets_the_same_mode(tmp_path):
    storage.write_atomic(tmp_path / "a.json", "{}")
    storage.save_tree({"w": torch.zeros(2)}, tmp_path / "b.safetensors")
    modes = {stat.S_IMODE(os.stat(p).st_mode) for p in tmp_path.iterdir()}
    assert modes == {storage.FILE_MODE}
    assert storage.FILE_MODE & 0o044  # readable by others where the umask allows, like any file


def test_a_lock_that_is_a_link_is_refused_by_name(tmp_path):
    X = torch.rand(256, 12)
    run_experiments(_cfg(), X, cache=tmp_path, progress=False)
    (lock,) = tmp_path.glob("*.lock")
    victim = tmp_path / "victim"
    victim.write_text("x")
    lock.unlink()
    lock.symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        run_experiments(_cfg(), X, cache=tmp_path, progress=False)
    assert victim.read_text() == "x"


def test_a_tree_nested_too_deep_is_refused_as_damage_not_a_crash(tmp_path):
    from safetensors.torch import save

    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "deep.safetensors"
    path.write_bytes(save({}, metadata={"format": storage.TREE_FORMAT, "tree": deep}))
    with pytest.raises(ValueError, match="does not parse"):
        storage.load_tree(path)
    with pytest.warns(UserWarning, match="kept as"):
        assert storage.load_or_discard(path, "run-cache file") is None


def test_a_checkpoint_that_parses_but_does_not_fit_its_group_is_moved_aside(tmp_path):
    X = torch.rand(256, 12)
    cfg = _cfg(epochs=2)
    straight = train_group(cfg, X, progress=False)
    ck = tmp_path / "g.partial.safetensors"
    storage.save_tree(
        {
            "format": 5,
            "configs": [c.as_dict() for c in cfg],
            "alive": [0],
            "epoch": 1,
            "params": {"linear.weight": torch.zeros(1, 3, 3)},  # not this group's shapes
            "opt": {"step": torch.zeros(()), "m": [], "v": []},
            "kind": {},
            "histories": [[]],
            "finished": [],
            "elapsed": 0.0,
        },
        ck,
    )
    with pytest.warns(UserWarning, match="does not fit this group"):
        resumed = train_group(cfg, X, checkpoint=ck, progress=False)
    assert torch.equal(resumed[0].state["linear.weight"], straight[0].state["linear.weight"])
    assert list(tmp_path.glob("*.unreadable-*"))
