"""Hungarian matching between predicted queries and ground-truth masks, per frame.

Cost of assigning query q to target j (Mask2Former's):

    C[q, j] = w_class * (-p_q(label_j)) + w_mask * BCE(m_q, t_j) + w_dice * dice(m_q, t_j)

with ``p_q`` the softmax over classes (no-object included), BCE averaged over pixels and
dice on sigmoid masks. The assignment minimising the total cost is found with
``scipy.optimize.linear_sum_assignment``.

Speed (ours; Mask2Former's matcher loops over images): when costs are taken on the full target
grid and every frame's targets share one size (the case of every batch of our loader), the
costs of all frames are computed at once on padded targets and copied to the host in one
transfer; only the assignment itself runs per frame. The per-frame loop stays for point
sampling and for frames of different sizes. Both give the same costs up to float summation
order. Measured by ``bench/train_step_phases.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn.utils.rnn import pad_sequence


def point_sample(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``masks: R x h x w`` at ``coords: R x P x 2`` ((x, y) in [0, 1]) -> R x P."""
    grid = 2.0 * coords.unsqueeze(2) - 1.0  # R x P x 1 x 2
    return F.grid_sample(masks.unsqueeze(1), grid.to(masks.dtype), align_corners=False)[:, 0, :, 0]


def pair_bce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE of every prediction against every target: ``... x Q x P``, ``... x n x P`` -> ``... x Q x n``.

    Mask2Former writes it ``(softplus(-x) @ t + softplus(x) @ (1 - t)) / P``; since
    ``softplus(-x) = softplus(x) - x`` that is ``(sum_p softplus(x) - x @ t) / P``: one softplus
    and one product instead of two of each (the same value up to rounding)."""
    t = targets.transpose(-1, -2)
    return (F.softplus(logits).sum(-1, keepdim=True) - logits @ t) / logits.shape[-1]


def pair_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss of every prediction against every target: ``... x Q x P``, ``... x n x P`` -> ``... x Q x n``."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.transpose(-1, -2)
    denominator = probs.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
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
        if self.num_points is None and same_target_size(targets):
            return self._batched(pred_logits, pred_masks, targets)
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

    def _batched(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                 targets: Sequence[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.match_packed(pred_logits, pred_masks, PackedTargets.of(targets, pred_masks.device))

    @torch.no_grad()
    def match_packed(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor,
                     packed: PackedTargets) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """All frames' full-grid costs at once; frame i's pair of index tensors, as ``forward``."""
        empty = torch.empty(0, dtype=torch.long)
        indices = [(empty, empty)] * packed.num_frames
        if not packed.live:
            return indices
        rows = packed.rows
        pred = F.interpolate(pred_masks.index_select(0, rows), size=packed.size, mode="bilinear", align_corners=False)
        pred = pred.flatten(2).float()  # F x Q x P
        prob = pred_logits.index_select(0, rows).float().softmax(-1)  # F x Q x (C+1)
        cost_class = -torch.gather(prob, 2, packed.labels[:, None, :].expand(-1, prob.shape[1], -1))
        cost = (self.cost_class * cost_class + self.cost_mask * pair_bce_cost(pred, packed.masks)
                + self.cost_dice * pair_dice_cost(pred, packed.masks)).cpu().numpy()
        for j, (i, n) in enumerate(zip(packed.live, packed.counts)):
            q_idx, t_idx = linear_sum_assignment(cost[j, :, :n])
            indices[i] = (torch.as_tensor(q_idx, dtype=torch.long), torch.as_tensor(t_idx, dtype=torch.long))
        return indices


class PackedTargets:
    """The targets of N frames of one size, padded into tensors once per loss call (shared by
    the matcher and the mask losses of every decoder layer).

    live: frames with at least one instance; counts: their instance counts; rows: ``live`` as a
    tensor; labels: ``F x n_max`` (long); masks: ``F x n_max x P`` (float, P = H * W, zero rows
    past a frame's count); size: (H, W).
    """

    def __init__(self, num_frames: int, live: list[int], counts: list[int], labels: torch.Tensor,
                 masks: torch.Tensor, size: tuple[int, int]) -> None:
        self.num_frames, self.live, self.counts = num_frames, live, counts
        self.labels, self.masks, self.size = labels, masks, size
        self.rows = torch.as_tensor(live, dtype=torch.long).to(masks.device)

    @classmethod
    def of(cls, targets: Sequence[dict], device: torch.device) -> PackedTargets:
        live = [i for i, t in enumerate(targets) if t["labels"].numel()]
        if not live:
            return cls(len(targets), [], [], torch.zeros(0, 0, dtype=torch.long, device=device),
                       torch.zeros(0, 0, 0, device=device), (0, 0))
        masks = pad_sequence([targets[i]["masks"].to(device).flatten(1).float() for i in live], batch_first=True)
        labels = pad_sequence([targets[i]["labels"].to(device) for i in live], batch_first=True)
        counts = [int(targets[i]["labels"].numel()) for i in live]
        return cls(len(targets), live, counts, labels, masks, tuple(targets[live[0]]["masks"].shape[-2:]))

    def matched(self, indices: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """(frame, query, label, mask ``M x P``) of every matched pair, frames in order."""
        slot = {i: j for j, i in enumerate(self.live)}
        pairs = [(i, q, t) for i, (q, t) in enumerate(indices) if len(q)]
        device = self.masks.device
        frames = torch.cat([torch.full((len(q),), i, dtype=torch.long) for i, q, _ in pairs]).to(device)
        queries = torch.cat([q for _, q, _ in pairs]).to(device)
        rows = torch.cat([torch.full((len(q),), slot[i], dtype=torch.long) for i, q, _ in pairs]).to(device)
        cols = torch.cat([t for _, _, t in pairs]).to(device)
        return frames, queries, self.labels[rows, cols], self.masks[rows, cols]


def same_target_size(targets: Sequence[dict]) -> bool:
    """True when every frame's target masks have one size (frames without instances aside)."""
    sizes = {tuple(t["masks"].shape[-2:]) for t in targets if t["labels"].numel()}
    return len(sizes) <= 1
