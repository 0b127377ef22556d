"""The TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders")."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...book.validation import check_positive_int
from .base import FirstLayer, Knob, ModelKind, Params, check_input

AUXK_COEF = 1 / 32  # Gao et al.'s weight of the AuxK loss
AUXK_MAX = 256  # AuxK reconstructs the residual with the top min(256, hidden/2) dead latents


def topk_relu(z: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of each row of z (the rest 0), then ReLU."""
    values, idx = z.topk(k, dim=-1)
    return torch.zeros_like(z).scatter(-1, idx, values.relu())


class _CentredLinear(torch.autograd.Function):
    """z = W (x - b_pre) + b for stacked runs: x (R, B, D), b_pre (R, D), W (R, K, D), b (R, K).

    Autograd of the plain formula gets b_pre's gradient by way of the gradient into every input,
    dz W: a sixth (B, K) x (K, D) GEMM per step, only to be summed over the batch. Here it is
    -(sum_batch dz) W, a vector times a matrix. The inputs x take no gradient.
    """

    @staticmethod
    def forward(ctx, x, pre_bias, weight, bias):  # type: ignore[override]
        centred = x - pre_bias.unsqueeze(1)
        ctx.save_for_backward(centred, weight)
        return torch.baddbmm(bias.unsqueeze(1), centred, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, dz):  # type: ignore[override]
        centred, weight = ctx.saved_tensors
        dz_sum = dz.sum(1)
        d_pre_bias = -torch.bmm(dz_sum.unsqueeze(1), weight).squeeze(1)
        return None, d_pre_bias, torch.bmm(dz.transpose(1, 2), centred), dz_sum


class TopKSAE(FirstLayer, nn.Module):
    """a = ReLU(TopK_k(W_enc (x - b_pre) + b_enc)): exactly the k largest pre-activations survive
    (fewer only where one of them is negative); x_hat = W_dec a + b_pre.

    The decoder's columns (one per latent) have unit norm, and the decoder starts as the
    encoder's transpose. Training (``TopKKind``) keeps the norms at 1, sets b_pre to the data
    mean before the first step (Gao et al. use the geometric median) and adds their AuxK loss
    for dead latents.
    """

    def __init__(self, input_dim: int = 784, hidden_dim: int = 64, k: int = 16) -> None:
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_positive_int("hidden_dim", hidden_dim)
        check_positive_int("k", k)
        if k > hidden_dim:
            raise ValueError(f"k={k} is not allowed with hidden_dim={hidden_dim}; need 1 <= k <= hidden_dim")
        self.input_dim, self.hidden_dim, self.k = input_dim, hidden_dim, k
        self.encoder = nn.Linear(input_dim, hidden_dim)
        self.decoder = nn.Linear(hidden_dim, input_dim, bias=False)
        self.pre_bias = nn.Parameter(torch.zeros(input_dim))
        with torch.no_grad():
            self.encoder.bias.zero_()
            self.decoder.weight.copy_(self.encoder.weight.T)
            self.normalize_decoder_()

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        self.decoder.weight.div_(self.decoder.weight.norm(dim=0, keepdim=True))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.input_dim)
        return self.encoder(x - self.pre_bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return topk_relu(self.pre_activations(x), self.k)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(codes) + self.pre_bias

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (reconstruction x_hat, activations a)."""
        a = self.encode(x)
        return self.decode(a), a


class TopKKind(ModelKind):
    """Training stacks of TopK SAEs, each run with its own k; gradients by autograd.

    Loss: MSE (mean over all elements) + AUXK_COEF x AuxK. AuxK: the dead latents' top-k_aux
    pre-activations reconstruct the main reconstruction's residual (held fixed), so latents that
    stopped firing get a gradient; a latent is dead after one epoch of samples without firing.
    Each decoder column's gradient loses its component along the column, and the columns are
    renormalised after each step.
    """

    name, terms, module = "topk", ("mse", "auxk"), TopKSAE
    per_run_state = ("k", "idle")
    checkpointed = ("idle",)
    user_name, saelens_architecture, saelens_pre_biased, has_decoder = "topk", "topk", True, True
    saelens_b_dec = "pre_bias"  # SAELens subtracts b_dec from the input (apply_b_dec_to_input)
    knobs = (Knob("k", "active latents per sample", type=int, minimum=1, field="k", at_most="hidden_dim"),)

    def __init__(self, configs: list, layout, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(configs, layout, device, dtype)
        self.k = torch.tensor([c.k for c in configs], device=device)
        self.k_aux = max(1, min(AUXK_MAX, configs[0].hidden_dim // 2))
        self.idle = torch.zeros(len(configs), configs[0].hidden_dim, dtype=torch.long, device=device)
        self.dead_after = 0  # training samples without firing after which a latent is dead (prepare sets it)
        # Whether the step must run without reading a tensor's value on the host. On the CPU such a
        # read costs nothing and lets the step skip work (AuxK while no latent is dead, BatchTopK's
        # bracketed cut); on a GPU it stalls the queue, and a step captured as a CUDA graph
        # (cuda_graphs) cannot branch on a value at all, so there the step takes the sync-free way
        # to the same numbers (tests/test_cuda_graphs.py holds the two ways equal bit for bit).
        self.sync_free = torch.device(device).type != "cpu"

    @classmethod
    def check_config(cls, config) -> None:
        if config.activation != "relu":
            raise ValueError(
                f"activation={config.activation!r} is not allowed for model={cls.name!r}; it uses 'relu'"
            )
        if not 1 <= config.k <= config.hidden_dim:
            raise ValueError(
                f"k={config.k} is not allowed for model={cls.name!r} with hidden_dim={config.hidden_dim}; "
                f"need 1 <= k <= hidden_dim"
            )

    @classmethod
    def build(cls, input_dim: int, config) -> nn.Module:
        return TopKSAE(input_dim, config.hidden_dim, config.k)

    @classmethod
    def saelens_fields(cls, config) -> dict:
        return {"k": config.k, "rescale_acts_by_decoder_norm": False}

    def _pre_activations(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """W_enc (x - b_pre) + b_enc for per-run inputs x (R, B, D)."""
        return _CentredLinear.apply(x, params["pre_bias"], params["encoder.weight"], params["encoder.bias"])

    @property
    def ks(self) -> list[int]:
        """Each run's k as a plain int, from the configs (``keep`` filters them with the runs): the
        step needs them as sizes, and ``self.k`` (a tensor) could give them only by a host read."""
        return [c.k for c in self.configs]

    def _topk_per_run(self, z: torch.Tensor) -> torch.Tensor:
        """topk_relu with each run's own k, one run at a time (an unsorted top-k of exactly k_r
        per run measured about twice as fast on CPU as a sorted top-max(k) for the whole stack)."""
        a = torch.zeros_like(z)
        for r, k in enumerate(self.ks):
            values, idx = z[r].topk(k, dim=-1, sorted=False)
            a[r] = a[r].scatter(-1, idx, values.relu())
        return a

    def _losses(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = self.layout.run_inputs(x)
        z = self._pre_activations(params, x)
        a = self._topk_per_run(z)
        Wd_t = params["decoder.weight"].transpose(1, 2)
        x_hat = torch.baddbmm(params["pre_bias"].unsqueeze(1), a, Wd_t)
        mse = (x_hat - x).square().mean((1, 2))
        auxk = self._auxk(z, x, x_hat, mse, Wd_t)
        return {"total": mse + AUXK_COEF * auxk, "mse": mse, "auxk": auxk}, a

    def _auxk(
        self, z: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor, mse: torch.Tensor, Wd_t: torch.Tensor
    ) -> torch.Tensor:
        """Each run's AuxK loss (R,): the dead latents' top-k_aux pre-activations (every live one
        masked to -inf) reconstruct the residual x - x_hat, held fixed.

        Where no latent is dead, a_aux is all zeros (ReLU of -inf) and AuxK is the residual's own
        mean square: the MSE, the same bits (x_hat - x and 0 - (x - x_hat) are the same numbers),
        with zero gradient. The CPU checks for a dead latent and, finding none, skips the three
        GEMMs; a sync-free step (``sync_free``) cannot ask, so it always computes the term.
        """
        if self.dead_after <= 0:  # no horizon yet (prepare not run): no latent counts as dead
            return mse.detach()
        dead = self.idle >= self.dead_after
        if not self.sync_free and not bool(dead.any()):
            return mse.detach()
        a_aux = topk_relu(z.masked_fill(~dead.unsqueeze(1), float("-inf")), self.k_aux)
        return (torch.bmm(a_aux, Wd_t) - (x - x_hat).detach()).square().mean((1, 2))

    def loss_and_grads(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Params]:
        """Autograd gradients, each decoder column's component along itself removed (the step then
        moves along the unit sphere, to first order); updates the idle counts in place (a latent
        that fired in this minibatch back to 0, every other one up by the minibatch's size), so
        that a replayed CUDA graph keeps counting in the same tensor."""
        out, a = self._losses(params, x)
        trained = [n for n, p in params.items() if p.requires_grad]  # a subclass's buffers get none
        grads = dict(zip(trained, torch.autograd.grad(out["total"].sum(), [params[n] for n in trained])))
        with torch.no_grad():
            w, g = params["decoder.weight"], grads["decoder.weight"]
            grads["decoder.weight"] = g - (g * w).sum(1, keepdim=True) * w
            self.idle.add_(a.shape[1]).masked_fill_((a > 0).any(1), 0)
        return out, grads

    def encode(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return self._topk_per_run(self._pre_activations(params, x.expand(self.layout.runs, -1, -1)))

    @torch.no_grad()
    def prepare(self, params: Params, train_x: torch.Tensor) -> None:
        """b_pre = the mean of the training data; the dead-latent horizon = one epoch of samples."""
        params["pre_bias"].copy_(train_x.mean(0).expand(self.layout.runs, -1))
        self.dead_after = len(train_x)

    @torch.no_grad()
    def after_step(self, params: Params) -> None:
        """The decoder's columns back to unit norm."""
        w = params["decoder.weight"]
        w.div_(w.norm(dim=1, keepdim=True))
