"""AVSBench evaluation metrics: the protocol every AVS paper reports, plus dataset-level variants.

Two metrics, both ``torchmetrics.Metric`` so their states sum across processes (DDP / Ray
Train workers): every state is a sum, so a video may be scored on any worker and the merged
result equals a single-process run.

``BinaryAVSMetric`` (S4 / MS3) follows AVSBench ``avs_scripts/avs_s4/utils/utility.py``
(``mask_iou`` and ``Eval_Fmeasure``) called from ``test.py`` with ``test_batch_size=1``, i.e.
once per video:

- Jaccard: per frame, prediction = ``sigmoid(logit) > 0.5`` (a probability of exactly 0.5 is
  background); IoU = |P & G| / |P | G|; where the ground truth is empty, the intersection is the
  number of correctly predicted background pixels and the union is H*W. Frames are averaged
  within the video, videos are averaged over the data set. AVSBench adds ``eps=1e-7`` to the
  union; the union here is never 0 (a frame with empty ground truth uses H*W), so we drop it
  (the difference is below 1.2e-7 per frame).
- F-score (beta^2 = 0.3): probabilities ``sigmoid(logit)`` in float32 are compared with
  ``>=`` against 255 thresholds ``torch.linspace(0, 1 - 1e-10, 255)`` built in float32 (so the
  last threshold is exactly 1.0, as in AVSBench); per threshold precision = TP / (#pred + 1e-20)
  and recall = TP / (#gt + 1e-20), F = (1 + b2) P R / (b2 P + R) with NaN set to 0. Frames
  whose ground truth is all background are skipped; the F curves of the remaining frames of the
  video are averaged, and the video scores the maximum over thresholds. A video whose frames are
  all empty scores 0 (AVSBench returns ``zeros(255).max()``) and still counts in the mean.

``SemanticAVSMetric`` (AVSS) follows AVSBench ``avs_scripts/avss/utils/compute_color_metrics.py``
(``_batch_miou_fscore``) and the accumulation in ``avs_scripts/avss/test.py``:

- prediction = ``argmax(softmax(logits))`` over C classes (background included), the softmax in
  the scores' own floating dtype as in AVSBench (first index wins a tie);
- per frame and class c: inter_c, pred_c, label_c pixel counts, union_c = pred_c + label_c -
  inter_c; IoU_c = inter_c / union_c (0 where union is 0, AVSBench divides by union + 2.2e-16);
  precision_c = inter_c / pred_c, recall_c = inter_c / label_c, F_c = (1 + b2) P R / (b2 P + R)
  with every NaN (0/0) set to 0, so F_c = 0 whenever inter_c = 0; no eps here;
- IoU_c and F_c are summed over frames, and count_c counts the frames where union_c > 0 (the
  class is in the prediction or the ground truth); per-class value = sum / count, a class never
  seen (count 0) scores 0; ``miou`` / ``fscore`` are the mean over all C classes.
- Labels outside the classes (``ignore_index``, default 255) are scored as the reference code
  scores them. ``_batch_miou_fscore`` shifts ids by one (``target + 1``, ``argmax + 1``), zeroes
  the prediction where ``target + 1 <= 0`` and counts each map with ``torch.histc(bins=C, min=1,
  max=C)``, which drops values outside [1, C]. So a pixel labelled 255 (shifted to 256 > C) is in
  no class's ground truth and in no intersection, but its prediction still counts in that class's
  ``pred_c`` (a false positive: it lowers precision and IoU, and a class predicted only on such
  pixels gets a counted frame scoring IoU 0 and F 0). A negative ``ignore_index`` (e.g. -1) is
  dropped from prediction and ground truth alike, as the reference's ``target > 0`` mask does.
  AVSBench's own loader never yields such labels (its labels are an argmax over palette colours),
  but padded or unannotated regions in other pipelines do; either way ``miou`` / ``fscore`` are
  the reference's numbers.
- Variant ``miou_drop_ignore`` / ``fscore_drop_ignore``: the same per-frame protocol with pixels
  labelled ``ignore_index`` removed from the prediction as well (the usual meaning of "ignore").
  It equals the protocol when the ground truth holds no such pixel, or when ``ignore_index < 0``.
- AVSBench pads 5-frame (v1s / v1m) clips to 10 frames with black images and all-background
  labels, and scores the padded frames too. Here only the frames passed to ``update`` are scored;
  the caller passes the annotated frames of a clip.

Dataset-level variants, always under their own ``*_dataset`` names, pool pixel counts over all
frames of all videos before dividing (sum I / sum U), the usual segmentation convention:

- binary ``miou_dataset`` = sum |P & G| / sum |P | G| over all frames (empty frames add their
  false positives to the union); ``fscore_dataset`` = max over thresholds of F computed from TP,
  #pred and #gt pooled over all frames;
- semantic ``miou_dataset`` = mean over C of sum inter_c / sum union_c, ``fscore_dataset`` =
  mean over C of F from pooled precision and recall; a class with no pixels anywhere scores 0,
  as in the protocol mean. Ignore-label pixels are counted as in the protocol (predictions there
  count); ``miou_dataset_drop_ignore`` / ``fscore_dataset_drop_ignore`` pool with them removed.

Names: ``_dataset`` = pooled instead of per-frame averaging, ``_drop_ignore`` = ignore-label
pixels removed from the prediction too; a name without either suffix is the AVSBench protocol.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

BETA2 = 0.3
NUM_THRESHOLDS = 255


def avsbench_thresholds(num: int = NUM_THRESHOLDS) -> torch.Tensor:
    """The F-score thresholds of AVSBench, float32 ``linspace(0, 1 - 1e-10, num)`` (last is 1.0)."""
    return torch.linspace(0, 1 - 1e-10, num, dtype=torch.float32)


def _f_measure(precision: torch.Tensor, recall: torch.Tensor, beta2: float) -> torch.Tensor:
    """(1 + b2) P R / (b2 P + R), with 0/0 (NaN) set to 0 as AVSBench does."""
    f = (1 + beta2) * precision * recall / (beta2 * precision + recall)
    return torch.nan_to_num(f, nan=0.0)


def _threshold_counts(
    prob: torch.Tensor, gt: torch.Tensor, thresholds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame and threshold k: #pixels with prob >= thr_k and how many of them are foreground.

    prob: [T, H, W] float32, gt: [T, H, W] bool, thresholds: [K] ascending.
    Returns (pred_pos, tp), both [T, K] int64. One pass with a histogram instead of K compares:
    ``bucketize(right=True)`` gives the number of thresholds <= p, and a pixel is predicted
    positive at threshold k exactly when that number is > k.
    """
    t, k = prob.shape[0], thresholds.numel()
    level = torch.bucketize(prob.reshape(t, -1), thresholds, right=True)  # [T, HW] in 0..K
    offset = (torch.arange(t, device=prob.device) * (k + 1)).unsqueeze(1)
    flat = (level + offset).reshape(-1)
    hist = torch.bincount(flat, minlength=t * (k + 1)).reshape(t, k + 1)
    hist_fg = torch.bincount(flat[gt.reshape(-1)], minlength=t * (k + 1)).reshape(t, k + 1)
    # pred_pos[:, j] = sum over levels > j  -> reverse cumulative sum, dropping level 0.
    pred_pos = hist.flip(1).cumsum(1).flip(1)[:, 1:]
    tp = hist_fg.flip(1).cumsum(1).flip(1)[:, 1:]
    return pred_pos, tp


class BinaryAVSMetric(Metric):
    """AVSBench S4 / MS3 metric: mIoU (Jaccard) and F-score, per video then over videos.

    ``update(logits, gt)`` takes ONE video: ``logits`` [T, H, W] foreground logits (before
    sigmoid), ``gt`` [T, H, W] binary ground truth (bool or 0/1 numbers) of the same frames.
    ``compute()`` returns a dict of 0-dim tensors: ``miou``, ``fscore`` (AVSBench protocol),
    ``miou_dataset``, ``fscore_dataset`` (pooled over all frames, see module docstring) and
    ``num_videos``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_thresholds: int = NUM_THRESHOLDS, beta2: float = BETA2, **kwargs):
        super().__init__(**kwargs)
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
        self.beta2 = beta2
        self.register_buffer("thresholds", avsbench_thresholds(num_thresholds), persistent=False)
        f64, i64 = torch.float64, torch.int64
        self.add_state("iou_sum", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("fscore_sum", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("num_videos", torch.zeros((), dtype=i64), dist_reduce_fx="sum")
        self.add_state("inter_total", torch.zeros((), dtype=i64), dist_reduce_fx="sum")
        self.add_state("union_total", torch.zeros((), dtype=i64), dist_reduce_fx="sum")
        self.add_state("gt_total", torch.zeros((), dtype=i64), dist_reduce_fx="sum")
        self.add_state("tp_total", torch.zeros(num_thresholds, dtype=i64), dist_reduce_fx="sum")
        self.add_state("pred_total", torch.zeros(num_thresholds, dtype=i64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, gt: torch.Tensor) -> None:
        """Score one video. logits: [T, H, W] float; gt: [T, H, W] in {0, 1}."""
        if logits.ndim != 3:
            raise ValueError(f"logits must be [T, H, W] for one video, got shape {tuple(logits.shape)}")
        if gt.shape != logits.shape:
            raise ValueError(f"gt shape {tuple(gt.shape)} must equal logits shape {tuple(logits.shape)}")
        if not logits.is_floating_point():
            raise ValueError(f"logits must be floating point, got {logits.dtype}")
        if gt.dtype != torch.bool:
            if not bool(((gt == 0) | (gt == 1)).all()):
                raise ValueError("gt must be binary (0/1 or bool); found other values")
            gt = gt != 0
        gt = gt.to(logits.device)

        prob = torch.sigmoid(logits.detach().float())  # float32 as AVSBench
        t, h, w = prob.shape
        gt_count = gt.sum((1, 2))
        empty = gt_count == 0

        # Jaccard, AVSBench convention for empty ground truth.
        pred = prob > 0.5
        inter = (pred & gt).sum((1, 2))
        union = (pred | gt).sum((1, 2))
        inter_bg = (~pred & ~gt).sum((1, 2))
        frame_inter = torch.where(empty, inter_bg, inter)
        frame_union = torch.where(empty, torch.full_like(union, h * w), union)
        video_iou = (frame_inter.double() / frame_union.double()).mean()

        # F-measure curves over thresholds.
        pred_pos, tp = _threshold_counts(prob, gt, self.thresholds.to(prob.device))
        precision = tp.double() / (pred_pos.double() + 1e-20)
        recall = tp.double() / (gt_count.double().unsqueeze(1) + 1e-20)
        f_curves = _f_measure(precision, recall, self.beta2)  # [T, K]
        if bool((~empty).any()):
            video_f = f_curves[~empty].mean(0).max()
        else:
            video_f = torch.zeros((), dtype=torch.float64, device=prob.device)

        dev = self.iou_sum.device  # the states' device may differ from the inputs'
        self.iou_sum += video_iou.to(dev)
        self.fscore_sum += video_f.to(dev)
        self.num_videos += 1
        self.inter_total += inter.sum().to(dev)
        self.union_total += union.sum().to(dev)
        self.gt_total += gt_count.sum().to(dev)
        self.tp_total += tp.sum(0).to(dev)
        self.pred_total += pred_pos.sum(0).to(dev)

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.num_videos) == 0:
            raise RuntimeError("BinaryAVSMetric.compute() called before any video was scored")
        n = self.num_videos.double()
        union = self.union_total.double()
        # No foreground predicted or annotated anywhere: all background is right, as in the protocol.
        miou_dataset = self.inter_total.double() / union if union > 0 else torch.ones_like(union)
        precision = self.tp_total.double() / (self.pred_total.double() + 1e-20)
        recall = self.tp_total.double() / (self.gt_total.double() + 1e-20)
        fscore_dataset = _f_measure(precision, recall, self.beta2).max()
        return {
            "miou": self.iou_sum / n,
            "fscore": self.fscore_sum / n,
            "miou_dataset": miou_dataset,
            "fscore_dataset": fscore_dataset,
            "num_videos": self.num_videos.clone(),
        }


def _class_iou_f(
    inter: torch.Tensor, pred: torch.Tensor, label: torch.Tensor, beta2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IoU, F and 'seen' (union > 0) per class from int64 pixel counts of any (same) shape.

    IoU is 0 where the union is 0 (AVSBench: 0 / (0 + 2.2e-16)); F has every 0/0 set to 0.
    """
    union = pred + label - inter
    i, u = inter.double(), union.double()
    iou = torch.where(union > 0, i / u.clamp(min=1), torch.zeros_like(i))
    fscore = _f_measure(i / pred.double(), i / label.double(), beta2)
    return iou, fscore, union > 0


def _class_mean(value_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Per-class sum / count, 0 for a class never counted."""
    c = count.double()
    return torch.where(c > 0, value_sum / c.clamp(min=1), torch.zeros_like(c))


class SemanticAVSMetric(Metric):
    """AVSBench AVSS metric: per-class mIoU and F-score over frames, mean over all classes.

    ``num_classes`` includes background (71 on AVSBench-semantic). ``update(logits, labels)``
    takes one video (or any set of frames): ``logits`` [T, C, H, W] (logits, or any scores whose
    argmax is the prediction, e.g. probabilities from ``segment``), ``labels`` [T, H, W] integer
    class ids in [0, C) or ``ignore_index``.

    ``ignore_index`` (default 255; ``None`` = no such label, every label must be a class id) is the
    label of pixels that belong to no class. It never collides with a class id. What it does:

    - ``miou`` / ``fscore`` / ``per_class_*`` / ``*_dataset`` (the AVSBench reference): if
      ``ignore_index >= num_classes`` (255), such a pixel is in no class's ground truth, but the
      class predicted there counts it as predicted, i.e. as a false positive; if
      ``ignore_index < 0`` the pixel is left out entirely (the reference masks out labels < 0).
    - ``*_drop_ignore``: the pixel is left out of prediction and ground truth alike.

    ``compute()`` returns 0-dim tensors ``miou``, ``fscore`` (AVSBench protocol),
    ``miou_drop_ignore``, ``fscore_drop_ignore`` (protocol averaging, ignore pixels dropped),
    ``miou_dataset``, ``fscore_dataset`` (pooled pixel counts, ignore pixels as in the protocol),
    ``miou_dataset_drop_ignore``, ``fscore_dataset_drop_ignore`` (pooled, ignore pixels dropped),
    ``num_frames``, and ``per_class_iou``, ``per_class_fscore`` ([C] protocol values).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, num_classes: int, ignore_index: int | None = 255, beta2: float = BETA2, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class id (< {num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # The reference keeps the prediction on a pixel whose label is >= C (out of its histogram
        # range) and zeroes it where the label is < 0.
        self._protocol_counts_ignored_pred = ignore_index is not None and ignore_index >= num_classes
        self.beta2 = beta2
        c, f64, i64 = num_classes, torch.float64, torch.int64
        # Per-frame sums of the protocol ...
        self.add_state("iou_sum", torch.zeros(c, dtype=f64), dist_reduce_fx="sum")
        self.add_state("fscore_sum", torch.zeros(c, dtype=f64), dist_reduce_fx="sum")
        self.add_state("class_count", torch.zeros(c, dtype=i64), dist_reduce_fx="sum")
        # ... and of the variant with ignore-label pixels dropped.
        self.add_state("iou_sum_drop_ignore", torch.zeros(c, dtype=f64), dist_reduce_fx="sum")
        self.add_state("fscore_sum_drop_ignore", torch.zeros(c, dtype=f64), dist_reduce_fx="sum")
        self.add_state("class_count_drop_ignore", torch.zeros(c, dtype=i64), dist_reduce_fx="sum")
        # Pooled counts. Ignore pixels are in no intersection or ground truth in either handling;
        # only the predicted counts differ.
        self.add_state("inter_total", torch.zeros(c, dtype=i64), dist_reduce_fx="sum")
        self.add_state("pred_total", torch.zeros(c, dtype=i64), dist_reduce_fx="sum")
        self.add_state("pred_total_drop_ignore", torch.zeros(c, dtype=i64), dist_reduce_fx="sum")
        self.add_state("label_total", torch.zeros(c, dtype=i64), dist_reduce_fx="sum")
        self.add_state("num_frames", torch.zeros((), dtype=i64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Score frames. logits: [T, C, H, W] float; labels: [T, H, W] int (ignore_index allowed)."""
        c = self.num_classes
        if logits.ndim != 4 or logits.shape[1] != c:
            raise ValueError(f"logits must be [T, {c}, H, W], got shape {tuple(logits.shape)}")
        t, _, h, w = logits.shape
        if labels.shape != (t, h, w):
            raise ValueError(f"labels shape {tuple(labels.shape)} must be {(t, h, w)} to match logits")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor of class ids, got {labels.dtype}")
        labels = labels.long().to(logits.device)
        if self.ignore_index is None:
            valid = torch.ones_like(labels, dtype=torch.bool)
        else:
            valid = labels != self.ignore_index
        if bool(((labels[valid] < 0) | (labels[valid] >= c)).any()):
            raise ValueError(f"labels hold ids outside [0, {c}) that are not ignore_index={self.ignore_index}")

        # softmax then argmax, as AVSBench, in the scores' own precision (float32 in AVSBench),
        # so that ties created by softmax rounding resolve identically (first index wins).
        scores = logits.detach()
        if not scores.is_floating_point():
            scores = scores.float()
        pred = torch.softmax(scores, dim=1).argmax(1)
        offset = (torch.arange(t, device=pred.device) * c).view(t, 1, 1)
        pred_all = (pred + offset).reshape(-1)  # every pixel, ignore-label ones included
        pred_idx = (pred + offset)[valid]
        label_idx = (labels + offset)[valid]
        hit = pred_idx == label_idx
        area_label = torch.bincount(label_idx, minlength=t * c).view(t, c)
        area_inter = torch.bincount(label_idx[hit], minlength=t * c).view(t, c)
        area_pred_drop = torch.bincount(pred_idx, minlength=t * c).view(t, c)
        if self._protocol_counts_ignored_pred:
            area_pred = torch.bincount(pred_all, minlength=t * c).view(t, c)
        else:
            area_pred = area_pred_drop

        dev = self.iou_sum.device  # the states' device may differ from the inputs'
        iou, fscore, seen = _class_iou_f(area_inter, area_pred, area_label, self.beta2)
        self.iou_sum += iou.sum(0).to(dev)
        self.fscore_sum += fscore.sum(0).to(dev)
        self.class_count += seen.sum(0).to(dev)
        iou, fscore, seen = _class_iou_f(area_inter, area_pred_drop, area_label, self.beta2)
        self.iou_sum_drop_ignore += iou.sum(0).to(dev)
        self.fscore_sum_drop_ignore += fscore.sum(0).to(dev)
        self.class_count_drop_ignore += seen.sum(0).to(dev)
        self.inter_total += area_inter.sum(0).to(dev)
        self.pred_total += area_pred.sum(0).to(dev)
        self.pred_total_drop_ignore += area_pred_drop.sum(0).to(dev)
        self.label_total += area_label.sum(0).to(dev)
        self.num_frames += t

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.num_frames) == 0:
            raise RuntimeError("SemanticAVSMetric.compute() called before any frame was scored")
        per_class_iou = _class_mean(self.iou_sum, self.class_count)
        per_class_f = _class_mean(self.fscore_sum, self.class_count)
        iou_drop = _class_mean(self.iou_sum_drop_ignore, self.class_count_drop_ignore)
        f_drop = _class_mean(self.fscore_sum_drop_ignore, self.class_count_drop_ignore)
        iou_ds, f_ds, _ = _class_iou_f(self.inter_total, self.pred_total, self.label_total, self.beta2)
        iou_ds_drop, f_ds_drop, _ = _class_iou_f(
            self.inter_total, self.pred_total_drop_ignore, self.label_total, self.beta2
        )
        return {
            "miou": per_class_iou.mean(),
            "fscore": per_class_f.mean(),
            "miou_drop_ignore": iou_drop.mean(),
            "fscore_drop_ignore": f_drop.mean(),
            "miou_dataset": iou_ds.mean(),
            "fscore_dataset": f_ds.mean(),
            "miou_dataset_drop_ignore": iou_ds_drop.mean(),
            "fscore_dataset_drop_ignore": f_ds_drop.mean(),
            "per_class_iou": per_class_iou,
            "per_class_fscore": per_class_f,
            "num_frames": self.num_frames.clone(),
        }
