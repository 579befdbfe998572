"""nmt.dropout.Dropout: torch's dropout in distribution, from torch's generator, cheaper on a CPU."""

import pytest
import torch

from nmt.dropout import Dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_the_mask_keeps_each_element_independently_at_one_minus_p(p):
    torch.manual_seed(0)
    keep = keep_mask(torch.Size([400_000]), p).view(-1, 4).float()  # 4: the 16-bit quarters of one draw
    tolerance = 4 * (p * (1 - p) / keep.size(0)) ** 0.5  # four standard errors
    assert torch.allclose(keep.mean(0), torch.full((4,), 1 - p), atol=tolerance)
    for i in range(4):  # quarters of the same 64 random bits are independent of each other
        for j in range(i + 1, 4):
            assert (keep[:, i] * keep[:, j]).mean().item() == pytest.approx((1 - p) ** 2, abs=tolerance)
    again = keep_mask(torch.Size([400_000]), p).view(-1, 4).float()  # and of the next draw's
    assert (keep * again).mean().item() == pytest.approx((1 - p) ** 2, abs=tolerance / 2)


def test_training_scales_what_it_keeps_and_evaluation_is_the_identity():
    x = torch.randn(64, 7, 33, requires_grad=True)
    drop = Dropout(0.3).train()
    y = drop(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.7)
    y.sum().backward()  # the gradient flows through the kept elements only, scaled the same
    assert torch.allclose(x.grad, kept.float() / 0.7)
    assert drop.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_the_same_seed_gives_the_same_mask_and_dtype_is_kept():
    x = torch.randn(5, 9, 16).bfloat16()
    masks = []
    for _ in range(2):
        torch.manual_seed(7)
        masks.append(Dropout(0.5).train()(x))
    assert torch.equal(masks[0], masks[1]) and masks[0].dtype == torch.bfloat16
    with pytest.raises(ValueError):
        Dropout(1.5)
