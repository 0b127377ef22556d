"""What every model kind shares: the contract the engine trains through, and the modules' helpers.

A model kind is two things in one file of ``kinds/``: the single-run ``nn.Module`` (what a reader
loads, encodes with and inspects) and a ``ModelKind`` subclass, the kind's part of training a
stack of R runs at once: its per-run hyperparameters, its loss terms and their gradients with
respect to the stacked parameters (addressed by the module's own state-dict names), and what it
does before the first step, to the gradients before each optimizer step, and after each. The
engine (``training/engine.py``) owns everything else: data orders, seeds, the optimizer over the
stack, divergence, checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...book.validation import check_int, check_number
from ..stacking import SeedLayout

ACTIVATIONS = {
    "relu": F.relu,
    "identity": lambda z: z,
    "softplus": F.softplus,
    "neg_relu": lambda z: -F.relu(z),  # -max(0, z): the author's sign comparison
}


def relu_backward(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g where z > 0, else 0. Relies on ``aten.threshold_backward``, the kernel autograd runs for
    ReLU's backward (one pass, no mask tensor); its signature is (grad, input, threshold)."""
    return torch.ops.aten.threshold_backward(g, z, 0.0)


# dL/dz from dL/da for each activation a = f(z), for hand-derived backward passes
ACTIVATION_GRADS = {
    "relu": relu_backward,
    "identity": lambda z, g: g,
    "softplus": lambda z, g: g * torch.sigmoid(z),
    "neg_relu": lambda z, g: relu_backward(z, -g),
}
Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Knob:
    """A setting a user chooses for a kind (its sparsity knob), declared once, in the kind's file:
    ``fit`` takes it as a keyword, the command as a flag, saved dictionaries record it, and
    ``RunConfig`` holds it where ``field`` says."""

    name: str
    """The keyword ``fit`` takes (the command's flag: ``--`` + name, '-' for '_')."""
    doc: str
    """One line: what it does (the flag's help, fit's messages)."""
    type: type = float
    """int or float."""
    default: float | None = None
    """Its value when not given; None: the user must give it."""
    minimum: float = 0.0
    """The smallest value allowed (a bound that depends on other settings is ``check_config``'s)."""
    field: str = ""
    """Where RunConfig holds it: a field ("l1", "k"), a lambda of its loss ("loss.lse"), or ""
    for ``RunConfig.knobs`` (a kind's own knob that RunConfig has no field for)."""
    at_most: str = ""
    """A RunConfig field it may not exceed ("hidden_dim" for TopK's k); ``check_config`` holds it."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: object, kind: str) -> float | int:
        """``value`` as a plain Python number of this knob's type, or an error naming the knob, the
        value and what is allowed (the upper bound ``at_most`` is ``check_config``'s to hold)."""
        try:
            plain = check_int(self.name, value) if self.type is int else check_number(self.name, value)
        except (TypeError, ValueError) as e:  # the package's number checks, with the kind named
            raise type(e)(f"{e} (kind={kind!r}: {self.doc})") from None
        if plain < self.minimum:
            upper = f" and <= {self.at_most}" if self.at_most else ""
            raise ValueError(f"{self.name}={value!r} must be >= {self.minimum:g}{upper} (kind={kind!r})")
        return plain

    def read(self, config) -> float | int:
        """This knob's value in a RunConfig."""
        if not self.field:
            return dict(config.knobs)[self.name]
        if self.field.startswith("loss."):
            return getattr(config.loss, self.field.removeprefix("loss."))
        return getattr(config, self.field)


def check_input(x: torch.Tensor, input_dim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != input_dim:
        raise ValueError(f"x must have shape (..., {input_dim}); got {tuple(x.shape)}")


class FirstLayer:
    """The contract every kind's single-run module keeps, so that no reader has to ask which kind it
    holds: ``W`` and ``b`` (its first linear layer, whatever the submodule is called: the one
    ``first_layer`` names), ``encode(x)`` (the codes), ``decode(codes)`` (the reconstruction, or a
    refusal that says why for a decoder-free kind) and ``dictionary`` (the rows a reader should look
    at: the decoder's columns where there is a decoder, the first layer's rows otherwise)."""

    first_layer = "encoder"

    @property
    def W(self) -> torch.Tensor:
        """(hidden_dim, input_dim): row j is unit j's weight vector (for ours, component j's prototype)."""
        return getattr(self, self.first_layer).weight

    @property
    def b(self) -> torch.Tensor:
        return getattr(self, self.first_layer).bias

    def get_weights(self) -> torch.Tensor:
        """A detached copy of W."""
        return self.W.detach().clone()

    @property
    def dictionary(self) -> torch.Tensor:
        """(hidden_dim, input_dim), detached: the decoder's columns (one row per latent) where the
        module has a decoder, else the first layer's rows."""
        decoder = getattr(self, "decoder", None)
        return (decoder.weight.T if decoder is not None else self.W).detach()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The reconstruction of inputs from their codes; a decoder-free module refuses by name."""
        raise NotImplementedError(
            f"{type(self).__name__} has no decoder: its reconstruction is a linear readout fitted "
            f"after training (metrics.fit_linear_readout; es.Dictionary keeps one once saved for SAELens)"
        )


class UserFacing:
    """What users see of a model kind, declared in the kind's file: the name they give it, its
    knobs, whether it decodes, and its SAELens form. ``fit``, the command, saved dictionaries and
    the SAELens export and import read these and nothing else (``ModelKind`` inherits them)."""

    name: ClassVar[str]

    user_name: ClassVar[str | None] = None
    """The name ``fit``, the command and saved dictionaries use (``kind="ours"``); None for a kind
    only the notebooks train through the engine."""
    knobs: ClassVar[tuple[Knob, ...]] = ()
    """The kind's knobs (``Knob``), each declared once here."""
    saelens_architecture: ClassVar[str | None] = None
    """SAELens's ``architecture`` the kind exports as (``to_saelens``); None: it has no SAELens form."""
    saelens_pre_biased: ClassVar[bool] = False
    """Whether SAELens subtracts b_dec from the input before encoding (``apply_b_dec_to_input``)."""
    saelens_b_dec: ClassVar[str] = "decoder.bias"
    """The state entry SAELens's b_dec holds (the TopK SAEs: "pre_bias")."""
    has_decoder: ClassVar[bool] = False
    """Whether the module decodes (``decode``); a decoder-free kind's reconstruction (and SAELens's
    W_dec, b_dec) is a linear readout fitted after training (``metrics.fit_linear_readout``)."""

    @classmethod
    def describe_knobs(cls) -> str:
        return ", ".join(f"{k.name} ({k.doc})" for k in cls.knobs) or "none"

    @classmethod
    def config_fields(cls, values: dict) -> dict:
        """RunConfig's fields for the knob ``values`` a user gave by name: each checked, defaults
        filled in; a knob the kind does not take, or a required one left out, refused by name."""
        label = cls.user_name or cls.name
        unknown = sorted(set(values) - {k.name for k in cls.knobs})
        if unknown:
            raise TypeError(
                f"kind={label!r} does not take {', '.join(unknown)}; its knobs are: {cls.describe_knobs()}"
            )
        fields: dict = {}
        for knob in cls.knobs:
            if knob.name not in values and knob.default is None:
                raise TypeError(f"kind={label!r} needs {knob.name}= ({knob.doc})")
            value = knob.check(values.get(knob.name, knob.default), label)
            if knob.field.startswith("loss."):
                fields.setdefault("loss", {})[knob.field.removeprefix("loss.")] = value
            elif knob.field:
                fields[knob.field] = value
            else:
                fields.setdefault("knobs", {})[knob.name] = value
        return fields

    @classmethod
    def knob_values(cls, config) -> dict:
        """Each knob's value in ``config``, by the names ``fit`` takes."""
        return {k.name: k.read(config) for k in cls.knobs}

    @classmethod
    def saelens_fields(cls, config) -> dict:
        """Fields of SAELens's cfg.json the architecture needs beyond the shapes (TopK: its k)."""
        return {}

    @classmethod
    def to_saelens(cls, state: Params, readout: torch.Tensor | None) -> Params:
        """SAELens's tensors for one run's state: W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_in),
        b_dec and any the architecture adds; ``readout`` (K + 1, D), bias last, stands in for the
        decoder of a decoder-free kind. This default is an autoencoder's (``encoder``, ``decoder``
        and ``saelens_b_dec``); a kind with another layout overrides it and ``from_saelens``."""
        cls._refuse_without_saelens_form()
        return {
            "W_enc": state["encoder.weight"].T,
            "b_enc": state["encoder.bias"],
            "W_dec": state["decoder.weight"].T,
            "b_dec": state[cls.saelens_b_dec],
        }

    @classmethod
    def from_saelens(cls, tensors: Params) -> tuple[Params, torch.Tensor | None]:
        """The state (and a decoder-free kind's readout) that ``to_saelens`` wrote as ``tensors``."""
        cls._refuse_without_saelens_form()
        state = {
            "encoder.weight": tensors["W_enc"].T.contiguous(),
            "encoder.bias": tensors["b_enc"],
            "decoder.weight": tensors["W_dec"].T.contiguous(),
            cls.saelens_b_dec: tensors["b_dec"],
        }
        return state, None

    @classmethod
    def _refuse_without_saelens_form(cls) -> None:
        if cls.saelens_architecture is None:
            raise ValueError(
                f"model kind {cls.name!r} has no SAELens form (its saelens_architecture is None)"
            )


class ModelKind(UserFacing):
    """A model kind's part of training R runs of one group as a stack.

    Subclasses set ``name``, ``terms`` (the loss terms logged besides "total") and ``module``, and
    implement ``build`` and ``loss_and_grads``; the rest has defaults. ``params`` arguments map the
    module's state-dict names to stacked tensors (leading dimension: run).
    """

    name: ClassVar[str]
    terms: ClassVar[tuple[str, ...]]
    module: ClassVar[type[nn.Module]]

    def __init__(self, configs: list, layout: SeedLayout, device: torch.device, dtype: torch.dtype) -> None:
        self.configs, self.layout = list(configs), layout
        self.device, self.dtype = device, dtype

    def per_run(self, values: list[float]) -> torch.Tensor:
        """A per-run hyperparameter as a tensor (R,) on the stack's device."""
        return torch.tensor(values, dtype=self.dtype, device=self.device)

    # -- the run config and the single-run module --------------------------------------------------
    @classmethod
    def check_config(cls, config) -> None:
        """Refuse, by name, a RunConfig field this kind cannot use (the SAEs take ReLU and no k)."""
        if config.activation != "relu":
            raise ValueError(
                f"activation={config.activation!r} is not allowed for model={cls.name!r}; it uses 'relu'"
            )
        cls.refuse_k(config)

    @classmethod
    def refuse_k(cls, config) -> None:
        """Refuse a nonzero ``k``: only the TopK kinds take one."""
        if config.k != 0:
            raise ValueError(
                f"k={config.k} is not allowed for model={cls.name!r}; k is the TopK SAE's (leave it 0)"
            )

    @classmethod
    def build(cls, input_dim: int, config) -> nn.Module:
        """The single-run module of ``config``, initialised from torch's current random state."""
        raise NotImplementedError

    @classmethod
    def parameter_count(cls, input_dim: int, config) -> int:
        """Trained parameters of one run, counted on torch's meta device (nothing allocated)."""
        with torch.device("meta"):
            module = cls.build(input_dim, config)
        return sum(p.numel() for p in module.parameters())

    @classmethod
    def gemm_flops_per_sample(cls, input_dim: int, config) -> float:
        """Floating-point operations (2 per multiply-add) of the matrix products that one training
        sample costs a step, counted from the shapes: a budget that, unlike wall time, is the same
        on every machine. This default is a first layer, with a decoder of the same size where the
        kind has one, forward and backward: the layer's forward and weight gradient (4 D K), and the
        decoder's forward, weight gradient and gradient into the code (6 D K more). Elementwise
        work, top-k selections and data-dependent extras (TopK's AuxK while latents are dead) are
        not counted."""
        return (10 if cls.has_decoder else 4) * input_dim * config.hidden_dim

    @classmethod
    def divergence_bound(cls, config, train_x: torch.Tensor) -> float:
        """The largest |epoch loss| a run can have and still count as training: for a model with a
        decoder, a thousand times the mean squared input (a thousand times worse than
        reconstructing every input as zero)."""
        return 1e3 * float(train_x.double().square().mean())

    # -- training a stack ---------------------------------------------------------------------------
    def loss_and_grads(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Params]:
        """Per-run loss terms ("total" and ``terms``, each (R,)) on minibatches x (S, B, D) laid out
        as ``self.layout`` says, and the gradient of the runs' summed totals for each parameter.

        This default is the short fallback any kind gets: each run's module forward
        (``torch.func.functional_call`` on a template module with that run's parameters) and its
        ``run_loss``, one run after the other, and autograd's gradient. A kind overrides it with
        a stacked forward (one batched GEMM for all runs) or a hand-derived gradient where that
        pays; the tests hold every kind's gradient to autograd of its single-run loss.
        """
        from torch.func import functional_call

        if not hasattr(self, "_template"):
            input_dim = params[f"{self.module.first_layer}.weight"].shape[-1]
            self._template = self.build(input_dim, self.configs[0]).to(self.device, self.dtype)
        xr = self.layout.run_inputs(x)
        outs = []
        for r in range(self.layout.runs):
            mine = {n: p[r] for n, p in params.items()}
            outs.append(self.run_loss(r, mine, functional_call(self._template, mine, (xr[r],)), xr[r]))
        out = {t: torch.stack([o[t] for o in outs]) for t in ("total", *self.terms)}
        trained = [n for n, p in params.items() if p.requires_grad]  # buffers get no gradient
        grads = torch.autograd.grad(out["total"].sum(), [params[n] for n in trained])
        return out, dict(zip(trained, grads))

    def run_loss(self, r: int, params: Params, output: object, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run r's loss terms ("total" and ``terms``, scalars) on its minibatch x (B, D), given its
        parameters and its module's output on x: what a kind defines to use the default
        ``loss_and_grads``."""
        raise NotImplementedError(f"model kind {self.name!r} defines neither loss_and_grads nor run_loss")

    def encode(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """Activations (R, N, K) for inputs x (N, D) shared by every run."""
        raise NotImplementedError

    def prepare(self, params: Params, train_x: torch.Tensor) -> None:
        """Anything data-dependent before the first step (nothing by default)."""

    def before_step(self, grads: list[torch.Tensor]) -> None:
        """Anything on the gradients (stacked, leading dimension run) between ``loss_and_grads`` and
        the optimizer step, in place, such as clipping each run's norm (nothing by default). It
        runs inside a captured CUDA graph, so it reads no tensor's value on the host."""

    def after_step(self, params: Params) -> None:
        """Anything after each optimizer step, such as a projection onto a constraint (nothing by default)."""

    def keep(self, idx: torch.Tensor) -> None:
        """Keep only the runs ``idx`` (a diverged run leaves the stack): every per-run tensor's rows."""
        self.configs = [self.configs[i] for i in idx.tolist()]
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor) and name in self.per_run_state:
                setattr(self, name, value[idx])
            elif isinstance(value, dict) and name in self.per_run_state:
                setattr(self, name, {k: v[idx] for k, v in value.items()})

    min_batch: ClassVar[int] = 1
    """The fewest samples a minibatch may hold: 2 for a kind whose loss takes a variance over the
    minibatch (batch_size and the epoch's last minibatch are held to it)."""

    buffers: ClassVar[tuple[str, ...]] = ()
    """State-dict entries of the module that are per-run state, not parameters: the engine stacks,
    checkpoints and returns them like parameters but gives them no gradient and no optimizer; the
    kind updates them itself (in ``after_step``), such as an inference threshold."""

    per_run_state: ClassVar[tuple[str, ...]] = ()
    """Attributes holding per-run tensors (or dicts of them), first dimension run: ``keep`` filters them."""

    surrogate_gradients: ClassVar[tuple[str, ...]] = ()
    """Parameters whose gradient is a pseudo-derivative (a straight-through estimator, as for the
    JumpReLU SAE's thresholds), not the loss's derivative: the finite-difference test leaves them
    out and the kind's own tests check them against their formula."""

    checkpointed: ClassVar[tuple[str, ...]] = ()
    """Attributes of training state (not hyperparameters) a checkpoint must hold, such as counters."""

    def state(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.checkpointed}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.checkpointed:
            setattr(self, name, state[name].to(self.device))


def log_units(hidden_dim: int) -> float:
    """ln K, the all-zero LSE value of one sample (at least ln 2)."""
    return math.log(max(hidden_dim, 2))
