"""Hungarian matching between predicted queries and ground-truth masks, per frame.

Cost of assigning query q to target j (Mask2Former's):

    C[q, j] = w_class * (-p_q(label_j)) + w_mask * BCE(m_q, t_j) + w_dice * dice(m_q, t_j)

with ``p_q`` the softmax over classes (no-object included), BCE averaged over pixels and
dice on sigmoid masks. The assignment minimising the total cost is found with
``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


def point_sample(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``masks: R x h x w`` at ``coords: R x P x 2`` ((x, y) in [0, 1]) -> R x P."""
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # R x P x 1 x 2
    return F.grid_sample(masks.unsqueeze(1), grid.to(masks.dtype), align_corners=False)[:, 0, :, 0]


def pair_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE of every prediction against every target: ``Q x P``, ``n x P`` -> ``Q x n``."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[-1]


def pair_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss of every prediction against every target: ``Q x P``, ``n x P`` -> ``Q x n``."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """Args:
        cost_class, cost_mask, cost_dice: weights of the three costs (COMBO: 2, 5, 5).
        num_points: if set, costs are computed on this many random points (the same points
            for all queries and targets of a frame); if None, on the full target grid, with
            predicted masks upsampled bilinearly to it.

    ``forward(outputs, targets)``: ``outputs["pred_logits"]: N x Q x (C+1)``,
    ``outputs["pred_masks"]: N x Q x h x w``; ``targets``: N dicts with ``labels: n_i`` (long)
    and ``masks: n_i x H x W``. Returns N pairs ``(query_idx, target_idx)`` of long tensors.
    """

    def __init__(
        self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int | None = None
    ) -> None:
        super().__init__()
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def forward(self, outputs: dict, targets: Sequence[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(f"matcher got {len(targets)} targets for {pred_logits.shape[0]} predicted frames")
        indices = []
        for logits, masks, target in zip(pred_logits, pred_masks, targets):
            labels = target["labels"]
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.long)
                indices.append((empty, empty))
                continue
            tgt = target["masks"].to(device=masks.device, dtype=masks.dtype)
            prob = logits.float().softmax(-1)
            cost_class = -prob[:, labels.to(logits.device)]
            if self.num_points is not None:
                coords = torch.rand(1, self.num_points, 2, device=masks.device)
                pred = point_sample(masks, coords.expand(masks.shape[0], -1, -1))
                tgt = point_sample(tgt, coords.expand(tgt.shape[0], -1, -1))
            else:
                pred = F.interpolate(masks[None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)[0]
                pred, tgt = pred.flatten(1), tgt.flatten(1)
            pred, tgt = pred.float(), tgt.float()
            cost = (
                self.cost_class * cost_class
                + self.cost_mask * pair_bce_cost(pred, tgt)
                + self.cost_dice * pair_dice_cost(pred, tgt)
            )
            q_idx, t_idx = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(q_idx, dtype=torch.long), torch.as_tensor(t_idx, dtype=torch.long)))
        return indices
