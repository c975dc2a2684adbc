"""Direct preference losses: DPO and its relatives (soft labels, cDPO, robust DPO, IPO, hinge),
the K-way ranking form of them, and KTO on unpaired binary feedback.

Notation: for a response y to prompt x, its log-ratio (the implicit reward divided by beta) is

    r(y) = log pi(y | x) - log pi_ref(y | x)         (summed over the response tokens)

and for a (winner w, loser l) pair  h = r(w) - r(l),  the margin  m = beta * h. s is the
sigmoid. Each pair loss has a base form l(h) for a pair whose label certainly favours w; a
soft label p = P(w better than l) trains on the expected loss under that label,

    loss(h, p) = p * l(h) + (1 - p) * l(-h)                          (`pair_losses`)

which for DPO is the cross-entropy -[p log s(m) + (1 - p) log s(-m)]; p = 1 is the hard loss,
p = 1/2 (a tie) is minimal at h = 0. Losses are in nats (IPO: squared log-ratio units).

K-way rankings reuse the reward model's pair batches (`reward_losses.build_pair_batch`): the
M responses of G records give (M,) log-ratios, a record's C(K, 2) pairs are ONE example
weighted 1/|P_g|, each record's `weight` applies (`ranking_preference_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from alignloop.algorithms.reward_losses import PairBatch

LOSSES = ("sigmoid", "cdpo", "robust", "ipo", "hinge")


def logratio_difference(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor) -> Tensor:
    """h = (log pi(w) - log pi_ref(w)) - (log pi(l) - log pi_ref(l)), all `(P,)` sequence log-probs -> `(P,)`."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def sigmoid_loss(h: Tensor, beta: float) -> Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): l(h) = -log s(beta * h). `(P,)` -> `(P,)`."""
    return -F.logsigmoid(beta * h)


def ipo_loss(h: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17): l(h) = (h - 1/(2 beta))^2, `(P,)` -> `(P,)`. beta is the
    paper's tau: the regression target of the log-ratio difference is 1/(2 beta). Under a soft
    label p, p l(h) + (1 - p) l(-h) is minimal at h = (2p - 1) / (2 beta): the paper's
    general-preference target (p - 1/2) / beta."""
    return (h - 1.0 / (2.0 * beta)) ** 2


def hinge_loss(h: Tensor, beta: float) -> Tensor:
    """Hinge on the margin (SLiC, Zhao et al. 2023): l(h) = max(0, 1 - beta * h). `(P,)` -> `(P,)`."""
    return torch.relu(1.0 - beta * h)


BASE = {"sigmoid": sigmoid_loss, "ipo": ipo_loss, "hinge": hinge_loss}


def soft_pair_loss(h: Tensor, p: Tensor | float, beta: float, base=sigmoid_loss) -> Tensor:
    """p * l(h) + (1 - p) * l(-h): the expected base loss under a soft label p, `(P,)`.

    With `base` = `sigmoid_loss`: -[p log s(beta h) + (1 - p) log s(-beta h)]."""
    p = torch.as_tensor(p, dtype=h.dtype, device=h.device)
    return p * base(h, beta) + (1.0 - p) * base(-h, beta)


def cdpo_loss(h: Tensor, p: Tensor | float, beta: float, eps: float) -> Tensor:
    """Conservative DPO (Mitchell 2023): each label flipped with probability eps, so the soft
    label becomes p' = (1 - eps) p + eps (1 - p); the loss is `soft_pair_loss(h, p', beta)`,
    i.e. (1 - eps) L(w, l) + eps L(l, w) for a hard label. `(P,)`."""
    p = torch.as_tensor(p, dtype=h.dtype, device=h.device)
    return soft_pair_loss(h, (1.0 - eps) * p + eps * (1.0 - p), beta)


def robust_loss(h: Tensor, p: Tensor | float, beta: float, eps: float) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, eq. 9): under labels flipped with probability eps < 1/2,

        l_eps(h) = [(1 - eps) l(h) - eps l(-h)] / (1 - 2 eps),   l(h) = -log s(beta h)

    is an unbiased estimate of the clean loss (its expectation over the flips is l(h)); a soft
    label p applies as p l_eps(h) + (1 - p) l_eps(-h). `(P,)`."""
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {eps}")

    def unbiased(x, b):
        return ((1.0 - eps) * sigmoid_loss(x, b) - eps * sigmoid_loss(-x, b)) / (1.0 - 2.0 * eps)

    return soft_pair_loss(h, p, beta, unbiased)


def pair_losses(h: Tensor, p: Tensor, beta: float, loss: str = "sigmoid", eps: float = 0.0) -> Tensor:
    """Per-pair loss `(P,)` of log-ratio differences h `(P,)` with soft labels p `(P,)` in [0.5, 1].

    loss: "sigmoid" (DPO; a hard label is p = 1), "cdpo" and "robust" (uniform label noise
    eps), "ipo", "hinge"; every one takes the soft labels as above."""
    if loss == "cdpo":
        return cdpo_loss(h, p, beta, eps)
    if loss == "robust":
        return robust_loss(h, p, beta, eps)
    if loss not in BASE:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return soft_pair_loss(h, p, beta, BASE[loss])


def ranking_preference_loss(logratios: Tensor, pairs: PairBatch, beta: float, loss: str = "sigmoid",
                            eps: float = 0.0, reduction: str = "mean") -> Tensor:
    """The K-way ranking form of a pair loss, vectorised over a batch of records (a scalar).

        loss_g = 1/|P_g| sum_{(w,l) in P_g} pair_loss(r_w - r_l, p_wl)      (one record g)
        loss   = sum_g c_g loss_g / sum_g c_g,    c_g = record weight (0 if P_g is empty)

    as the reward model's `ranking_loss` does (InstructGPT's 1/C(K,2)), with r the log-ratios.

    Args:
        logratios: `(M,)` r = log pi - log pi_ref of every response, records concatenated in order.
        pairs: `reward_losses.build_pair_batch` of the records (ties: skipped, or p = 0.5 with
            tie_mode "soft"; soft labels p).
        reduction: "mean", or "sum" (the numerator only: divide the sum over micro-batches and
            processes by the total of `pairs.effective_weight.sum()`).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    h = logratios[pairs.winner] - logratios[pairs.loser]  # (P,)
    per_pair = pair_losses(h, pairs.p.to(h.dtype), beta, loss, eps)
    g = pairs.num_groups
    pair_sum = torch.zeros(g, dtype=per_pair.dtype, device=per_pair.device).index_add(0, pairs.group, per_pair)
    per_record = pair_sum / torch.bincount(pairs.group, minlength=g).to(per_pair.dtype).clamp_min(1)  # (G,)
    weight = pairs.effective_weight.to(per_record.dtype)
    total = (weight * per_record).sum()
    if reduction == "sum":
        return total
    denominator = weight.sum()
    return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def kto_reference_point(mismatched_logratios_sum: Tensor, count: Tensor | int) -> Tensor:
    """KTO's z0 (Ethayarajh et al. 2024, eq. 8): a batch estimate of KL(pi || pi_ref), the mean
    log-ratio of completions paired with prompts they were NOT written for, clamped at 0 and not
    back-propagated. Takes the sum and count (summed over processes first), returns a scalar."""
    count = torch.as_tensor(count, dtype=mismatched_logratios_sum.dtype, device=mismatched_logratios_sum.device)
    return (mismatched_logratios_sum / count.clamp_min(1)).clamp_min(0).detach()


def kto_losses(logratios: Tensor, desirable: Tensor, z0: Tensor | float, beta: float,
               desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tensor:
    """Per-example KTO loss `(B,)` (Ethayarajh et al. 2024, eq. 7): with r the log-ratio `(B,)`,

        v = lambda_D s(beta (r - z0))   for a desirable example (label 1)
        v = lambda_U s(beta (z0 - r))   for an undesirable one (label 0)
        loss = lambda_y - v

    `desirable` `(B,)` bool. The paper keeps lambda_D n_D / (lambda_U n_U) in [1, 4/3]."""
    z0 = torch.as_tensor(z0, dtype=logratios.dtype, device=logratios.device)
    lam = torch.where(desirable, torch.full_like(logratios, desirable_weight), torch.full_like(logratios, undesirable_weight))
    sign = torch.where(desirable, torch.ones_like(logratios), -torch.ones_like(logratios))
    return lam - lam * torch.sigmoid(beta * sign * (logratios - z0))
