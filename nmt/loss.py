"""Label-smoothed cross-entropy that ignores padding (PAD targets add nothing to the loss or its
gradient), and R-Drop's consistency term between two dropout passes."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from nmt.tokenizer import PAD


def token_loss_sum(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """logits (B, T, V), target (B, T) → summed loss over non-PAD targets (a scalar).

    The caller divides by the number of target tokens, so batches of any padding weigh tokens equally.
    """
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        target.reshape(-1),
        ignore_index=PAD,
        label_smoothing=label_smoothing,
        reduction="sum",
    )


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
