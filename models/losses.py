"""COMBO's losses: Hungarian set loss (class CE + mask BCE + dice, deep supervision) and the
adaptive inter-frame consistency loss; ``ComboLoss`` puts them together. After COMBO's
``modeling/criterion.py`` (S4 / MS3) and ``criterion_ss.py`` (AVSS), themselves Mask2Former's.

Ground truth reaches every model per frame as ``{"labels": n, "masks": n x H x W}``
(``targets_from_masks`` builds these from class-id maps, background included, as COMBO's
dataset mappers do), or ``None`` for a frame without ground truth (S4 training clips annotate
only their first frame).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.matcher import HungarianMatcher, PackedTargets, point_sample, same_target_size


def targets_from_masks(
    masks: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    has_gt: Sequence[bool] | torch.Tensor | None = None,
) -> list[dict | None]:
    """Per-frame set targets from class-id maps, as COMBO's dataset mappers build them.

    Args:
        masks: ``N x H x W`` integer ids: 0 background, ``1..num_classes`` the classes (binary
            S4/MS3 ground truth is 0/1 with ``num_classes=1``), ``ignore_index`` ignored pixels.
        num_classes: foreground classes C.
        ignore_index: id of pixels that belong to no instance.
        has_gt: optional N flags; frames flagged False get ``None`` (no supervision).

    Returns N entries ``{"labels": LongTensor[n], "masks": BoolTensor[n, H, W]}`` with one
    instance per class id present in the frame, the background (label 0) included, labels the
    class ids themselves; or ``None``. Pixels that no instance covers are the ignored ones.
    Models that do not learn the background take ``foreground_targets`` of these.
    """
    if masks.dim() != 3 or masks.is_floating_point():
        raise ValueError(f"masks must be an N x H x W integer tensor of class ids, got {masks.dtype} {tuple(masks.shape)}")
    if has_gt is not None and len(has_gt) != masks.shape[0]:
        raise ValueError(f"has_gt has {len(has_gt)} flags for {masks.shape[0]} masks")
    targets: list[dict | None] = []
    for i, frame in enumerate(masks.long()):
        if has_gt is not None and not bool(has_gt[i]):
            targets.append(None)
            continue
        ids = torch.unique(frame)
        ids = ids[ids != ignore_index]
        bad = ids[(ids < 0) | (ids > num_classes)]
        if bad.numel():
            raise ValueError(
                f"mask {i} holds class ids {bad.tolist()} outside 0..{num_classes} (num_classes={num_classes}, "
                f"ignore_index={ignore_index})"
            )
        targets.append({"labels": ids, "masks": frame[None] == ids[:, None, None]})
    return targets


def foreground_targets(targets: Sequence[dict | None]) -> list[dict | None]:
    """``targets_from_masks`` output without the background instance, class id k -> label k - 1:
    the label space of a model that does not learn the background."""
    out: list[dict | None] = []
    for target in targets:
        if target is None:
            out.append(None)
            continue
        keep = target["labels"] != 0
        out.append({"labels": target["labels"][keep] - 1, "masks": target["masks"][keep.to(target["masks"].device)]})
    return out


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over masks of ``1 - (2|p t| + 1) / (|p| + |t| + 1)``, divided by ``num_masks``.
    logits, targets: ``n x P``."""
    probs = logits.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over masks of the per-pixel mean BCE, divided by ``num_masks``. ``n x P`` each."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(-1).sum() / num_masks


def uncertain_points(
    logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> torch.Tensor:
    """Mask2Former's point choice: of ``oversample_ratio * num_points`` random points, keep the
    ``importance_sample_ratio`` share closest to the decision boundary (|logit| smallest), fill up
    with fresh random points. ``logits: R x h x w`` -> coords ``R x num_points x 2`` in [0, 1]."""
    r = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(r, num_sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits, coords).abs()
    num_uncertain = int(importance_sample_ratio * num_points)
    idx = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    rest = torch.rand(r, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([chosen, rest], dim=1)


def _num_masks_across_workers(count: int, device: torch.device) -> float:
    """Mean number of target masks per worker (DDP), at least 1: the normaliser Mask2Former uses.

    A collective: under torch.distributed every rank must call it once per loss call, whatever
    its batch holds (a rank without ground truth contributes 0)."""
    total = torch.tensor([float(count)], device=device)
    world = 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
        world = torch.distributed.get_world_size()
    return max(total.item() / world, 1.0)


class HungarianLoss(nn.Module):
    """Set loss of a mask-classification model, with deep supervision.

    For each prediction (final and every ``aux_outputs`` entry): match queries to targets
    (``HungarianMatcher`` with the same weights), then
    ``weight_class * CE(classes; no-object weighted no_object_weight)
    + weight_mask * BCE(matched masks) + weight_dice * dice(matched masks)``.

    The mask losses are normalised by the mean number of target masks per worker, an
    all-reduce that every rank joins on every call; a rank whose frames carry no ground truth
    joins it too and returns a zero loss that is still a function of every prediction, so DDP's
    gradient all-reduce sees the same parameters on every rank (COMBO's criterion has no early
    return; ours returned before the all-reduce on such a rank, and a multi-worker run hung).

    Args:
        num_classes: classes K of the label space (logits have K + 1 entries, last = no object;
            target labels in 0..K-1). COMBO: C + 1, background learned as class 0.
        num_points: if set, mask losses use this many points per mask chosen near the
            boundary (Mask2Former; COMBO: 12544); if None, predictions are upsampled to the
            target size and every pixel counts.

    ``forward(outputs, targets)``: ``outputs`` has ``pred_logits: N x Q x (K+1)``,
    ``pred_masks: N x Q x h x w`` and optionally ``aux_outputs``; ``targets`` is a list of N
    dicts (see ``targets_from_masks``) or ``None`` for frames without ground truth (skipped).
    Returns a dict: ``loss`` (weighted total, a scalar tensor), and unweighted parts
    ``loss_ce``, ``loss_mask``, ``loss_dice`` (final layer) and ``loss_ce_{i}`` ... (aux i);
    the same keys on every rank.
    """

    def __init__(
        self,
        num_classes: int,
        weight_class: float = 2.0,
        weight_mask: float = 5.0,
        weight_dice: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int | None = None,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.weight_class, self.weight_mask, self.weight_dice = weight_class, weight_mask, weight_dice
        self.num_points = num_points
        self.oversample_ratio, self.importance_sample_ratio = oversample_ratio, importance_sample_ratio
        self.matcher = HungarianMatcher(weight_class, weight_mask, weight_dice, num_points)
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = no_object_weight
        self.register_buffer("class_weight", class_weight, persistent=False)

    def _single(self, outputs: dict, targets: Sequence[dict], num_masks: float,
                packed: PackedTargets | None = None) -> dict[str, torch.Tensor]:
        if packed is not None:
            return self._packed(outputs, packed, num_masks)
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        indices = self.matcher(outputs, targets)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        src_masks, tgt_masks = [], []
        for i, ((q_idx, t_idx), target) in enumerate(zip(indices, targets)):
            # targets may live on another device than the predictions: index each on its own
            labels, tgt = target["labels"], target["masks"]
            t_idx_tgt = t_idx.to(labels.device)
            q_idx = q_idx.to(logits.device)
            target_classes[i, q_idx] = labels[t_idx_tgt].to(logits.device)
            if len(q_idx):
                src_masks.append(masks[i, q_idx])
                tgt_masks.append(tgt[t_idx.to(tgt.device)].to(device=masks.device, dtype=masks.dtype))
        loss_ce = F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.class_weight)
        if not src_masks:
            zero = masks.sum() * 0.0  # keeps the graph connected for DDP
            return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
        # matched pairs of all frames, each frame's target resolution may differ: go per frame
        bce, dice = masks.new_zeros(()).float(), masks.new_zeros(()).float()
        for src, tgt in zip(src_masks, tgt_masks):
            if self.num_points is not None:
                with torch.no_grad():
                    coords = uncertain_points(
                        src.detach(), self.num_points, self.oversample_ratio, self.importance_sample_ratio
                    )
                    tgt_points = point_sample(tgt, coords)
                src_points = point_sample(src, coords)
            else:
                src_points = F.interpolate(src[None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)[0]
                src_points, tgt_points = src_points.flatten(1), tgt.flatten(1)
            bce = bce + sigmoid_bce_loss(src_points.float(), tgt_points.float(), num_masks)
            dice = dice + dice_loss(src_points.float(), tgt_points.float(), num_masks)
        return {"loss_ce": loss_ce, "loss_mask": bce, "loss_dice": dice}

    def _packed(self, outputs: dict, packed: PackedTargets, num_masks: float) -> dict[str, torch.Tensor]:
        """``_single`` on targets of one size, full grid: every frame's matched pairs at once."""
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        indices = self.matcher.match_packed(logits.detach(), masks.detach(), packed)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        matched = packed.matched(indices) if any(len(q) for q, _ in indices) else None
        if matched is not None:
            target_classes[matched[0], matched[1]] = matched[2]
        loss_ce = F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.class_weight)
        if matched is None:
            zero = masks.sum() * 0.0  # keeps the graph connected for DDP
            return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
        frames, queries, _, tgt = matched
        src = F.interpolate(masks[frames, queries][:, None], size=packed.size, mode="bilinear", align_corners=False)
        src = src.flatten(1).float()  # M x P
        return {"loss_ce": loss_ce, "loss_mask": sigmoid_bce_loss(src, tgt, num_masks),
                "loss_dice": dice_loss(src, tgt, num_masks)}

    def forward(self, outputs: dict, targets: Sequence[dict | None]) -> dict[str, torch.Tensor]:
        n = outputs["pred_logits"].shape[0]
        if len(targets) != n:
            raise ValueError(f"HungarianLoss got {len(targets)} targets for {n} predicted frames")
        keep = [i for i, t in enumerate(targets) if t is not None]
        kept_targets = [targets[i] for i in keep]
        labels = [t["labels"] for t in kept_targets if t["labels"].numel()]
        if labels and int(torch.cat([x.to("cpu") for x in labels]).max()) >= self.num_classes:
            raise ValueError(f"target labels must be in 0..{self.num_classes - 1} (num_classes={self.num_classes})")
        device = outputs["pred_logits"].device
        # before any early return: the other ranks wait in this all-reduce
        num_masks = _num_masks_across_workers(sum(len(t["labels"]) for t in kept_targets), device)
        layers = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        if not keep:
            # zero, but a function of every prediction: DDP then reduces the same gradients here
            zero = sum(out[k].sum() * 0.0 for _, out in layers for k in ("pred_logits", "pred_masks"))
            parts = ("loss_ce", "loss_mask", "loss_dice")
            return {"loss": zero, **{k + suffix: zero for suffix, _ in layers for k in parts}}

        def select(out: dict) -> dict:
            if len(keep) == n:
                return out
            idx = torch.as_tensor(keep, device=device)
            return {k: out[k].index_select(0, idx) for k in ("pred_logits", "pred_masks")}

        # one target size on the full grid (every batch of our loader): the targets are padded into
        # tensors once, and every layer matches and scores all its frames at once (models.matcher)
        packed = PackedTargets.of(kept_targets, device) if self.num_points is None and same_target_size(kept_targets) else None
        losses: dict[str, torch.Tensor] = {}
        total = 0.0
        for suffix, out in layers:
            parts = self._single(select(out), kept_targets, num_masks, packed)
            total = (
                total
                + self.weight_class * parts["loss_ce"]
                + self.weight_mask * parts["loss_mask"]
                + self.weight_dice * parts["loss_dice"]
            )
            losses.update({k + suffix: v for k, v in parts.items()})
        losses["loss"] = total
        return losses


def adaptive_consistency_loss(mask_logits: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
    """COMBO's adaptive inter-frame consistency loss for one decoder layer.

    For consecutive frames t, t+1 of each clip: ``d = 1 - cos(m_t, m_{t+1})`` on the flattened
    mask logits, ``w = exp(-d)``; loss = ``sum over clips and pairs of d * w / (B * (T - 1))``.
    ``w`` is not detached, as in COMBO's code (``SetCriterion.get_similarity_loss``, with
    ``CosineEmbeddingLoss`` for d). COMBO reshapes by a hard-coded 5 frames, which on 10-frame
    AVSS clips compares frames within each half and skips the pair (5, 6); ours uses the clip's T.

    What is flattened: ALL queries of a frame together (``Q * h * w`` values per frame), as
    COMBO's released criterion does. Every frame uses the same learned queries, so query q of
    frame t and of frame t+1 are the same slot and the concatenation lines them up; one cosine
    over the whole frame weighs each query by its mask energy, so the many near-empty
    "no object" queries do not count as much as the ones that hold the sounding object, which
    a per-query mean of cosines would let them do.

    Args:
        mask_logits: ``B x T x ...`` (e.g. ``B x T x Q x h x w``), or ``(B*T) x ...`` with
            ``num_frames=T`` given.
    Returns a scalar tensor; 0 when T = 1 (no pairs).
    """
    if num_frames is not None:
        if mask_logits.shape[0] % num_frames:
            raise ValueError(f"first dim {mask_logits.shape[0]} is not a multiple of num_frames={num_frames}")
        mask_logits = mask_logits.reshape(mask_logits.shape[0] // num_frames, num_frames, *mask_logits.shape[1:])
    if mask_logits.dim() < 3:
        raise ValueError(f"mask_logits must be B x T x ..., got shape {tuple(mask_logits.shape)}")
    b, t = mask_logits.shape[:2]
    if t < 2:
        return mask_logits.sum() * 0.0
    flat = mask_logits.reshape(b, t, -1).float()
    d = 1.0 - F.cosine_similarity(flat[:, :-1], flat[:, 1:], dim=-1, eps=1e-8)  # B x (T-1)
    return (d * torch.exp(-d)).sum() / (b * (t - 1))


class ComboLoss(nn.Module):
    """COMBO's training loss: ``HungarianLoss`` + ``lambda_ada`` x the adaptive consistency loss
    of the initial prediction and of decoder layers 1..L-1, summed over them; not of the final
    layer L, as COMBO's decoder collects them (``middles_attn_mask`` skips the last layer).

    Args:
        num_classes: foreground classes C.
        learn_background: COMBO's class setup: the Hungarian loss runs over C + 1 classes with
            the background a class (id 0) and a mask target like any other; False (ours): C
            foreground classes, the background instance dropped (``foreground_targets``).
        lambda_ada: weight of the consistency loss (COMBO's ``COSINE_WEIGHT``: 10); 0 skips it.
        hungarian_kwargs: the rest of ``HungarianLoss``'s arguments.

    ``forward(outputs, targets)``: the COMBO output dict (must carry ``num_frames``) and N = B*T
    per-frame targets of ``targets_from_masks`` (``None`` where a frame has no ground truth; the
    consistency loss still uses every frame). Returns the ``HungarianLoss`` dict plus ``loss_ada``
    (unweighted sum over layers) and ``loss_ada_{i}`` (i = 0 the initial prediction, i the
    decoder layer i), with ``loss`` the weighted total.
    """

    def __init__(
        self, num_classes: int, learn_background: bool = True, lambda_ada: float = 10.0, **hungarian_kwargs
    ) -> None:
        super().__init__()
        self.learn_background = learn_background
        self.hungarian = HungarianLoss(num_classes + 1 if learn_background else num_classes, **hungarian_kwargs)
        self.lambda_ada = lambda_ada

    def forward(self, outputs: dict, targets: Sequence[dict | None]) -> dict[str, torch.Tensor]:
        losses = self.hungarian(outputs, targets if self.learn_background else foreground_targets(targets))
        if self.lambda_ada:
            if "num_frames" not in outputs:
                raise KeyError("ComboLoss needs outputs['num_frames'] (T) for the consistency loss")
            num_frames = int(outputs["num_frames"])
            ada = [adaptive_consistency_loss(o["pred_masks"], num_frames) for o in outputs.get("aux_outputs", [])]
            if not ada:
                raise ValueError("the consistency loss needs the initial prediction in outputs['aux_outputs']")
            for i, value in enumerate(ada):
                losses[f"loss_ada_{i}"] = value
            losses["loss_ada"] = torch.stack(ada).sum()
            losses["loss"] = losses["loss"] + self.lambda_ada * losses["loss_ada"]
        return losses
