"""The TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders")."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...book.validation import check_positive_int
from ..stacking import linear_shared_input
from .base import FirstLayer, Knob, ModelKind, Params, check_input, relu_backward

AUXK_COEF = 1 / 32  # Gao et al.'s weight of the AuxK loss
AUXK_MAX = 256  # AuxK reconstructs the residual with the top min(256, hidden/2) dead latents


def topk_relu(z: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of each row of z (the rest 0), then ReLU."""
    values, idx = z.topk(k, dim=-1)
    return torch.zeros_like(z).scatter(-1, idx, values.relu())


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
    """Training stacks of TopK SAEs, each run with its own k; gradients derived by hand.

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

    @staticmethod
    def _encoder_bias(params: Params) -> torch.Tensor:
        """b_enc - W_enc b_pre (R, K): W_enc (x - b_pre) + b_enc is W_enc x plus this, so the inputs
        enter the GEMM as they are and no run needs its own centred copy of the minibatch."""
        weight, pre_bias = params["encoder.weight"], params["pre_bias"]
        return params["encoder.bias"] - torch.bmm(weight, pre_bias.unsqueeze(2)).squeeze(2)

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
            a[r].scatter_(-1, idx, values.relu())
        return a

    @torch.no_grad()
    def loss_and_grads(self, params: Params, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], Params]:
        """Loss terms and gradients for minibatches x (S, B, D), derived by hand in the L1 SAE's
        pattern (each seed row's minibatch enters one GEMM; the residual x_hat - x is formed once
        and scaled in place into its own gradient): autograd's graph made about a dozen passes over
        the (R, B, D) residuals per step, and those passes, not the GEMMs, set the step's time.

        Each decoder column's gradient loses its component along the column (the step then moves
        along the unit sphere, to first order); the idle counts are updated in place (a latent that
        fired in this minibatch back to 0, every other one up by the minibatch's size), so that a
        replayed CUDA graph keeps counting in the same tensor."""
        W_enc, W_dec, pre_bias = params["encoder.weight"], params["decoder.weight"], params["pre_bias"]
        R, (S, B, D) = self.layout.runs, x.shape
        z = self.layout.linear(x, W_enc, self._encoder_bias(params))
        a = self._topk_per_run(z)
        W_dec_t = W_dec.transpose(1, 2)
        # x_hat - x = a W_dec^T + (b_pre - x): the GEMM accumulates onto b_pre - x
        diff = (pre_bias.view(S, -1, 1, D) - x.unsqueeze(1)).view(R, B, D).baddbmm_(a, W_dec_t)
        mse = torch.linalg.vector_norm(diff, dim=(1, 2)).square() / (B * D)
        auxk, a_aux, g_aux = self._auxk(z, diff, mse, W_dec_t)
        g_xhat = diff.mul_(2.0 / (B * D))
        g_z = relu_backward(a, torch.bmm(g_xhat, W_dec))  # a > 0 exactly where a latent passed
        g_dec = torch.bmm(g_xhat.transpose(1, 2), a)
        if a_aux is not None:
            g_z += relu_backward(a_aux, torch.bmm(g_aux, W_dec))
            g_dec.baddbmm_(g_aux.transpose(1, 2), a_aux)
        g_enc, g_enc_bias = self.layout.linear_grads(g_z, x)
        g_enc -= g_enc_bias.unsqueeze(2) * pre_bias.unsqueeze(1)  # the -b_pre inside W_enc (x - b_pre)
        grads = {
            "encoder.weight": g_enc,
            "encoder.bias": g_enc_bias,
            "decoder.weight": g_dec - (g_dec * W_dec).sum(1, keepdim=True) * W_dec,
            "pre_bias": g_xhat.sum(1) - torch.bmm(g_enc_bias.unsqueeze(1), W_enc).squeeze(1),
        }
        self.idle.add_(B).masked_fill_((a > 0).any(1), 0)
        return {"total": mse + AUXK_COEF * auxk, "mse": mse, "auxk": auxk}, grads

    def _auxk(
        self, z: torch.Tensor, diff: torch.Tensor, mse: torch.Tensor, W_dec_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Each run's AuxK loss (R,), the dead latents' activations a_aux and d(AUXK_COEF x AuxK) /
        d(a_aux W_dec^T): the dead latents' top-k_aux pre-activations (every live one masked to
        -inf) reconstruct the residual x - x_hat, held fixed (``diff`` is x_hat - x).

        Where no latent is dead, a_aux is all zeros (ReLU of -inf) and AuxK is the residual's own
        mean square: the MSE, the same bits, with zero gradient. The CPU checks for a dead latent
        and, finding none, skips the work (a_aux None); a sync-free step (``sync_free``) cannot
        ask, so it always computes the term.
        """
        if self.dead_after <= 0:  # no horizon yet (prepare not run): no latent counts as dead
            return mse, None, None
        dead = self.idle >= self.dead_after
        if not self.sync_free and not bool(dead.any()):
            return mse, None, None
        a_aux = topk_relu(z.masked_fill(~dead.unsqueeze(1), float("-inf")), self.k_aux)
        B, D = diff.shape[1:]
        residual = torch.baddbmm(diff, a_aux, W_dec_t)  # a_aux W_dec^T - (x - x_hat)
        auxk = torch.linalg.vector_norm(residual, dim=(1, 2)).square() / (B * D)
        return auxk, a_aux, residual.mul_(2.0 * AUXK_COEF / (B * D))

    def encode(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        z = linear_shared_input(x, params["encoder.weight"], self._encoder_bias(params))
        return self._topk_per_run(z)

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
