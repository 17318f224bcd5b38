"""The Fast Gradient Sign Method (Goodfellow et al.), as the paper's §8.A uses it (Figure 10).

The step is taken on the *image* v in [0, 1], before the model's own normalisation
``x0 = (v − mean)/std``:

    v_adv = clip(v + ε · sign(∇_v CE(f((v − mean)/std), label)), 0, 1)

with the cross-entropy of the scores (softmax applied here only) and ``label`` the true label
(by default the clean top-1). The perturbed image is not quantised to 8 bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fgsm(model: nn.Module, x0: Tensor, mean: Tensor, std: Tensor, eps: float,
         label: int) -> tuple[Tensor, Tensor]:
    """(v_adv, x0_adv), both ``(1, C, H, W)``; ``mean``/``std`` broadcast against x0."""
    mean = mean.to(x0.device, x0.dtype)
    std = std.to(x0.device, x0.dtype)
    v = (x0.detach() * std + mean).clamp(0, 1)
    with torch.enable_grad():
        v = v.clone().requires_grad_(True)
        loss = F.cross_entropy(model((v - mean) / std),
                               torch.tensor([label], device=x0.device))
        (grad,) = torch.autograd.grad(loss, v)
    v_adv = (v.detach() + eps * grad.sign()).clamp(0, 1)
    return v_adv, (v_adv - mean) / std
