"""Similarity functions f(teacher, student) for distillation over (B, C) score matrices (query x candidate).

All return a scalar averaged over queries (and, for the pairwise ones, over pairs). ``tau`` is the softmax temperature
of the listwise/pairwise losses; the regression losses (``mse``, ``margin_mse``) compare raw scores. ``mask`` (B, C),
optional: True marks a column to ignore for that query (a candidate listed twice, e.g. an in-batch doc that is also in
the query's own top-K), so every doc counts once.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

RANKNET_ANCHORS = 32  # pairs are (one of the teacher's top-32 candidates, any lower-scored candidate)
_NEG = -1e4            # logit given to masked columns (after /tau): exp() underflows to exactly 0 in float32


def _valid(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(t, dtype=torch.bool) if mask is None else ~mask


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x.masked_fill(mask, _NEG)


def listnet(t: torch.Tensor, s: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy -sum softmax(t/tau) * log softmax(s/tau) over the candidates (the paper's default)."""
    p = F.softmax(_masked(t / tau, mask), dim=1)
    return -(p * F.log_softmax(_masked(s / tau, mask), dim=1)).sum(1).mean()


def _pair_kl(dt: torch.Tensor, ds: torch.Tensor) -> torch.Tensor:
    """KL between two-way distributions (sigmoid(dt), sigmoid(-dt)) || (sigmoid(ds), sigmoid(-ds)), elementwise."""
    return (torch.sigmoid(dt) * (F.logsigmoid(dt) - F.logsigmoid(ds))
            + torch.sigmoid(-dt) * (F.logsigmoid(-dt) - F.logsigmoid(-ds)))


def kl(t: torch.Tensor, s: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise KL: p = the teacher's best candidate; for every other candidate j, KL between the teacher's and the
    student's two-way softmax over (p, j) at temperature tau; mean over pairs.

    The pairwise form of KL distillation for dense retrieval (Lin et al., 2020, "Distilling dense representations
    for ranking using tightly-coupled teachers": a positive against each negative), like Margin-MSE a (positive,
    negative) pair loss. The listwise KL(softmax(t/tau) || softmax(s/tau)) is ListNet minus the teacher's entropy, a
    constant: its gradient is ListNet's, so a listwise "kl" row would duplicate the ``listnet`` row.
    """
    t_m = _masked(t, mask)
    p = t_m.argmax(1, keepdim=True)
    dt = (t.gather(1, p) - t) / tau
    ds = (s.gather(1, p) - s) / tau
    pairs = _valid(t, mask).scatter(1, p, False)
    return (_pair_kl(dt, ds) * pairs).sum() / pairs.sum().clamp_min(1)


def mse(t: torch.Tensor, s: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between raw scores."""
    valid = _valid(t, mask)
    return (((s - t) ** 2) * valid).sum() / valid.sum().clamp_min(1)


def margin_mse(t: torch.Tensor, s: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Margin-MSE: the teacher's best candidate p is the 'positive'; mean over j of ((t_p - t_j) - (s_p - s_j))^2."""
    valid = _valid(t, mask)
    p = _masked(t, mask).argmax(1, keepdim=True)
    tm = t.gather(1, p) - t
    sm = s.gather(1, p) - s
    return (((tm - sm) ** 2) * valid).sum() / valid.sum().clamp_min(1)


def ranknet(t: torch.Tensor, s: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise logistic loss on pairs (a, j) with t_a > t_j, a among the teacher's top candidates,
    weighted by the teacher margin: sum w_aj * log(1 + exp(-(s_a - s_j)/tau)) / sum w_aj, w_aj = t_a - t_j."""
    valid = _valid(t, mask)
    a = _masked(t, mask).topk(min(RANKNET_ANCHORS, t.shape[1]), dim=1).indices
    tw = (t.gather(1, a).unsqueeze(2) - t.unsqueeze(1)).clamp_min(0)          # (B, A, C) teacher margins
    tw = tw * (valid.gather(1, a).unsqueeze(2) & valid.unsqueeze(1))
    sd = s.gather(1, a).unsqueeze(2) - s.unsqueeze(1)
    return (tw * F.softplus(-sd / tau)).sum() / tw.sum().clamp_min(1e-12)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "listnet": listnet, "kl": kl, "margin_mse": margin_mse, "ranknet": ranknet, "mse": mse}


def label_term(s: torch.Tensor, mask: torch.Tensor | None, tau: float, keep: torch.Tensor | None = None
               ) -> torch.Tensor:
    """-log softmax(s / tau) at column 0 (a query's labeled positive), over its unmasked candidates, averaged over
    the batch; rows where ``keep`` (B,) is False add 0."""
    logits = _masked(s / tau, mask)
    per_query = torch.logsumexp(logits, 1) - logits[:, 0]
    return (per_query if keep is None else per_query * keep).mean()


def combined_loss(loss_ivf: torch.Tensor | None, loss_pq: torch.Tensor | None, w: float | None
                  ) -> tuple[torch.Tensor, float | None]:
    """``loss_pq + w * loss_ivf`` (either may be absent); ``w=None`` ('auto', LibVQ's 'scaled_to_pqloss') is set
    once, at the first step, to loss_pq / loss_ivf and kept."""
    if loss_pq is None or loss_ivf is None:
        return (loss_ivf if loss_pq is None else loss_pq), w
    if w is None:
        w = float(loss_pq.detach() / (loss_ivf.detach() + 1e-6))
    return loss_pq + w * loss_ivf, w
