"""Label-smoothed cross-entropy that ignores padding (PAD targets add nothing to the loss or its
gradient), and R-Drop's consistency term between two dropout passes."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from nmt.tokenizer import PAD


def token_loss_sum(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """logits (B, T, V) or (N, V), target (B, T) or (N,) → summed loss over non-PAD targets (a scalar): what
    `F.cross_entropy(logits.float(), target, ignore_index=PAD, label_smoothing=..., reduction="sum")` gives,
    up to rounding, in fewer passes over the logits (see `SmoothedCrossEntropy`).

    The caller divides by the number of target tokens, so batches of any padding weigh tokens equally.
    """
    flat = logits.reshape(-1, logits.size(-1))
    return SmoothedCrossEntropy.apply(flat, target.reshape(-1), label_smoothing)


class SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy summed over the rows whose target is not PAD: per row, with ε the
    smoothing and V the columns, (1 − ε) (lse − z_target) + ε (lse − mean z), lse = logsumexp(z).

    Its gradient, softmax(z) − (1 − ε) one-hot − ε / V (zero on PAD rows), is formed in the forward
    pass from the exponentials the loss needs anyway, so backward only scales it: on 2 CPU cores a bf16
    training batch takes about 3% less time (0.7 to 5.5% in seven timings) than with F.cross_entropy (its
    log-softmax, its backward and the sum of its two terms' gradients)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
        z = logits.float()  # (N, V)
        real = (target != PAD).unsqueeze(1)  # (N, 1)
        top = z.amax(1, keepdim=True)  # (N, 1)
        p = torch.sub(z, top).exp_()  # (N, V), softmax(z) × its row's sum
        total = p.sum(1, keepdim=True)
        lse = top + total.log()  # (N, 1)
        nll = lse - z.gather(1, target.unsqueeze(1))
        per_row = (1 - eps) * nll + eps * (lse - z.mean(1, keepdim=True)) if eps else nll
        loss = torch.where(real, per_row, 0.0).sum()
        ctx.dtype = logits.dtype
        if ctx.needs_input_grad[0]:
            keep = real.float()  # (N, 1): 0 zeroes a PAD row's gradient, with no pass or sync of its own
            grad = torch.addcmul(keep * (-eps / z.size(1)), p, keep / total)  # softmax − ε / V
            grad.scatter_add_(1, target.unsqueeze(1), keep * (eps - 1))  # − (1 − ε) one-hot
            ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, upstream: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad * upstream).to(ctx.dtype), None, None


def rdrop_loss_sum(
    logits_a: torch.Tensor, logits_b: torch.Tensor, target: torch.Tensor, label_smoothing: float, alpha: float
) -> torch.Tensor:
    """Two passes' logits (N, V) for the same N real targets (N,), under different dropout masks → summed
    over the N tokens: the mean of the two cross-entropies plus alpha/4 × the symmetric KL divergence between
    the passes. Per pass, that is R-Drop's loss (Liang et al. 2021: CE_a + CE_b + alpha/2 (KL(a|b) + KL(b|a)))
    halved, so alpha keeps the paper's meaning and the scale per token stays that of one pass."""
    ce = token_loss_sum(logits_a, target, label_smoothing) + token_loss_sum(logits_b, target, label_smoothing)
    logp_a = torch.log_softmax(logits_a.float(), dim=-1)
    logp_b = torch.log_softmax(logits_b.float(), dim=-1)
    kl = F.kl_div(logp_a, logp_b, reduction="sum", log_target=True)  # KL(b | a)
    kl = kl + F.kl_div(logp_b, logp_a, reduction="sum", log_target=True)  # + KL(a | b)
    return ce / 2 + alpha / 4 * kl
