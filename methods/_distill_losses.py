"""Similarity functions f(teacher, student) for distillation over (B, C) score matrices (query x candidate).

All return a scalar averaged over queries. ``tau`` is the softmax temperature of the listwise/pairwise losses;
the regression losses (``mse``, ``margin_mse``) compare raw scores.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

RANKNET_ANCHORS = 32  # pairs are (one of the teacher's top-32 candidates, any lower-scored candidate)


def listnet(t: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
    """Cross-entropy -sum softmax(t/tau) * log softmax(s/tau) (the paper's default)."""
    return -(F.softmax(t / tau, dim=1) * F.log_softmax(s / tau, dim=1)).sum(1).mean()


def kl(t: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(softmax(t/tau) || softmax(s/tau)): ListNet minus the teacher's entropy (same gradient, 0 at a match)."""
    log_p = F.log_softmax(t / tau, dim=1)
    return (log_p.exp() * (log_p - F.log_softmax(s / tau, dim=1))).sum(1).mean()


def mse(t: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean squared error between raw scores."""
    return ((s - t) ** 2).mean()


def margin_mse(t: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
    """Margin-MSE: the teacher's best candidate p is the 'positive'; mean over j of ((t_p - t_j) - (s_p - s_j))^2."""
    p = t.argmax(1, keepdim=True)
    tm = t.gather(1, p) - t
    sm = s.gather(1, p) - s
    return ((tm - sm) ** 2).mean()


def ranknet(t: torch.Tensor, s: torch.Tensor, tau: float) -> torch.Tensor:
    """Pairwise logistic loss on pairs (a, j) with t_a > t_j, a among the teacher's top candidates,
    weighted by the teacher margin: sum w_aj * log(1 + exp(-(s_a - s_j)/tau)) / sum w_aj, w_aj = t_a - t_j."""
    a = t.topk(min(RANKNET_ANCHORS, t.shape[1]), dim=1).indices
    tw = (t.gather(1, a).unsqueeze(2) - t.unsqueeze(1)).clamp_min(0)          # (B, A, C) teacher margins
    sd = s.gather(1, a).unsqueeze(2) - s.unsqueeze(1)
    return (tw * F.softplus(-sd / tau)).sum() / tw.sum().clamp_min(1e-12)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "listnet": listnet, "kl": kl, "margin_mse": margin_mse, "ranknet": ranknet, "mse": mse}
