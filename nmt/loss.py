"""Label-smoothed cross-entropy that ignores padding: PAD targets add nothing to the loss or its gradient."""

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
