"""AVSBench metrics: hand-computed cases, a literal re-statement of the protocol, worker merging."""

import numpy as np
import pytest
import torch

from models.metrics import BinaryAVSMetric, SemanticAVSMetric, avsbench_thresholds


# ----------------------------------------------------------------------------- references
def reference_binary_video(logits: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """The S4/MS3 protocol for one video written as plainly as possible (loops, numpy)."""
    prob = torch.sigmoid(torch.from_numpy(logits).float()).numpy()
    thresholds = avsbench_thresholds().numpy()
    ious, curves = [], []
    for p, g in zip(prob, gt):
        pred = (p > 0.5).astype(np.int64)
        if g.sum() == 0:
            ious.append(((1 - pred) * (1 - g)).sum() / g.size)
        else:
            ious.append((pred * g).sum() / np.maximum(pred, g).sum())
            curve = []
            for thr in thresholds:
                y = (p >= thr).astype(np.float64)
                tp = (y * g).sum()
                prec, rec = tp / (y.sum() + 1e-20), tp / (g.sum() + 1e-20)
                with np.errstate(invalid="ignore", divide="ignore"):
                    f = 1.3 * prec * rec / (0.3 * prec + rec)
                curve.append(0.0 if np.isnan(f) else f)
            curves.append(curve)
    fscore = float(np.mean(curves, axis=0).max()) if curves else 0.0
    return float(np.mean(ious)), fscore


def reference_semantic(logits: torch.Tensor, labels: torch.Tensor, c: int) -> tuple[float, float]:
    """The AVSS protocol restated with histograms over class ids + 1 (no ignore label)."""
    pred = torch.softmax(logits, 1).argmax(1).double() + 1
    lab = labels.double() + 1
    inter_map = pred * (pred == lab)
    ious, fs, count = torch.zeros(c), torch.zeros(c), torch.zeros(c)
    for i in range(lab.shape[0]):
        a_i = torch.histc(inter_map[i], bins=c, min=1, max=c)
        a_p = torch.histc(pred[i], bins=c, min=1, max=c)
        a_l = torch.histc(lab[i], bins=c, min=1, max=c)
        a_u = a_p + a_l - a_i
        ious += a_i / (a_u + 2.220446049250313e-16)
        count[a_u > 0] += 1
        p, r = a_i / a_p, a_i / a_l
        f = 1.3 * p * r / (0.3 * p + r)
        f[torch.isnan(f)] = 0
        fs += f
    miou = torch.nan_to_num(ious / count, nan=0.0).mean()
    fscore = torch.nan_to_num(fs / count, nan=0.0).mean()
    return float(miou), float(fscore)


AVSBENCH_EPS = 2.220446049250313e-16


def reference_avss_loop(logits: torch.Tensor, labels: torch.Tensor, c: int):
    """AVSBench ``_batch_miou_fscore`` + the accumulation of ``avss/test.py``, pixel by pixel.

    Labels may hold any integer (255, -1, ...): they go through the reference's arithmetic
    unchanged. Ids are shifted by one, the prediction is zeroed where the shifted label is not
    > 0, and a map value v counts for class v - 1 only when 1 <= v <= C (the range of
    ``histc(bins=C, min=1, max=C)``; checked against torch.histc below). Sums are float32 as in
    the reference. Returns (miou, fscore, per-class IoU, per-class F) as numpy / floats.
    """
    predict = torch.softmax(logits, dim=1).argmax(1).numpy() + 1
    target = labels.numpy().astype(np.float32) + 1
    n, h, w = target.shape
    iou_sum = np.zeros(c, np.float32)
    f_sum = np.zeros(c, np.float32)
    count = np.zeros(c, np.float32)
    for i in range(n):
        p_map = np.zeros((h, w), np.float32)
        i_map = np.zeros((h, w), np.float32)
        a_pred = np.zeros(c, np.float32)
        a_lab = np.zeros(c, np.float32)
        a_inter = np.zeros(c, np.float32)
        for y in range(h):
            for x in range(w):
                t = target[i, y, x]
                p = float(predict[i, y, x]) if t > 0 else 0.0
                both = p if p == t else 0.0
                p_map[y, x], i_map[y, x] = p, both
                if 1 <= p <= c:
                    a_pred[int(p) - 1] += 1
                if 1 <= t <= c:
                    a_lab[int(t) - 1] += 1
                if 1 <= both <= c:
                    a_inter[int(both) - 1] += 1
        for counts, m in ((a_pred, p_map), (a_lab, target[i]), (a_inter, i_map)):
            hist = torch.histc(torch.from_numpy(np.ascontiguousarray(m)), bins=c, min=1, max=c)
            assert np.array_equal(counts, hist.numpy())
        a_union = a_pred + a_lab - a_inter
        iou_sum += a_inter / (np.float32(AVSBENCH_EPS) + a_union)
        count[a_union != 0] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            prec, rec = a_inter / a_pred, a_inter / a_lab
            f = np.float32(1.3) * prec * rec / (np.float32(0.3) * prec + rec)
        f[np.isnan(f)] = 0
        f_sum += f
    with np.errstate(invalid="ignore", divide="ignore"):
        iou_pc, f_pc = iou_sum / count, f_sum / count
    iou_pc[np.isnan(iou_pc)] = 0
    f_pc[np.isnan(f_pc)] = 0
    return float(iou_pc.mean()), float(f_pc.mean()), iou_pc, f_pc


# ----------------------------------------------------------------------------- binary
def two_hand_videos():
    # Video A, frame 1: one foreground pixel; logit 0 (prob exactly 0.5) must be background.
    a_logits = torch.tensor([[[2.0, 0.0], [-1.0, 3.0]], [[-1.0, -1.0], [0.0, 1.0]]])
    a_gt = torch.tensor([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], dtype=torch.uint8)
    # Video B: all frames empty.
    b_logits = torch.full((1, 2, 2), -1.0)
    b_gt = torch.zeros((1, 2, 2), dtype=torch.uint8)
    return (a_logits, a_gt), (b_logits, b_gt)


def test_binary_hand_computed():
    (a_l, a_g), (b_l, b_g) = two_hand_videos()
    metric = BinaryAVSMetric()
    metric.update(a_l, a_g)
    metric.update(b_l, b_g)
    out = metric.compute()
    # Video A: frame 1 pred {(0,0),(1,1)} vs gt {(0,0)} -> 1/2; frame 2 (empty gt):
    # 3 correct background pixels / 4 -> 3/4; video IoU 0.625. Video B: 4/4 = 1.
    assert float(out["miou"]) == pytest.approx((0.625 + 1.0) / 2, abs=1e-12)
    # Video A F: only frame 1 counts. Best threshold in (0.5, sig(2)]: predicted {sig(2), sig(3)},
    # P = 1/2, R = 1, F = 1.3 * 0.5 / (0.15 + 1) = 13/23. Video B (all empty) scores 0.
    assert float(out["fscore"]) == pytest.approx((13 / 23 + 0.0) / 2, abs=1e-12)
    # Dataset level: I = 1, U = 2 (frame A1) + 1 (false positive in A2) = 3.
    assert float(out["miou_dataset"]) == pytest.approx(1 / 3, abs=1e-12)
    # Pooled counts: a threshold in (sig(1), sig(2)] predicts 2 pixels, 1 correct -> 13/23.
    assert float(out["fscore_dataset"]) == pytest.approx(13 / 23, abs=1e-12)
    assert int(out["num_videos"]) == 2


def test_binary_half_probability_is_background_for_iou_but_counts_for_f():
    metric = BinaryAVSMetric()
    metric.update(torch.zeros(1, 1, 2), torch.ones(1, 1, 2))
    out = metric.compute()
    assert float(out["miou"]) == 0.0  # sigmoid(0) = 0.5 is not > 0.5
    assert float(out["fscore"]) == pytest.approx(1.0)  # but 0.5 >= every threshold <= 0.5


def test_binary_all_empty_video_scores_zero_f_and_one_iou_when_right():
    metric = BinaryAVSMetric()
    metric.update(torch.full((3, 4, 4), -5.0), torch.zeros(3, 4, 4, dtype=torch.bool))
    out = metric.compute()
    assert float(out["miou"]) == 1.0
    assert float(out["fscore"]) == 0.0


def test_binary_matches_literal_protocol_on_random_videos():
    rng = np.random.default_rng(0)
    metric = BinaryAVSMetric()
    ious, fs = [], []
    for v in range(6):
        logits = rng.normal(0, 3, size=(5, 12, 10)).astype(np.float32)
        logits[0, :3, :3] = 0.0  # exact 0.5 probabilities
        logits[1, 0, :4] = 30.0  # saturated: sigmoid == 1.0 == last threshold
        gt = (rng.random((5, 12, 10)) < 0.3).astype(np.int64)
        gt[2] = 0  # an empty frame in every video
        if v == 3:
            gt[:] = 0  # one all-empty video
        ref_iou, ref_f = reference_binary_video(logits, gt)
        ious.append(ref_iou)
        fs.append(ref_f)
        metric.update(torch.from_numpy(logits), torch.from_numpy(gt))
    out = metric.compute()
    assert float(out["miou"]) == pytest.approx(np.mean(ious), abs=1e-9)
    assert float(out["fscore"]) == pytest.approx(np.mean(fs), abs=1e-9)


def test_binary_saturated_logit_reaches_last_threshold():
    # sigmoid(30) is exactly 1.0 in float32, so it is >= the last threshold (1.0 in float32);
    # with every other pixel below, the last threshold gives P = R = 1.
    logits = torch.full((1, 2, 2), -30.0)
    logits[0, 0, 0] = 30.0
    gt = torch.zeros(1, 2, 2)
    gt[0, 0, 0] = 1
    metric = BinaryAVSMetric()
    metric.update(logits, gt)
    assert float(metric.compute()["fscore"]) == pytest.approx(1.0)


def random_binary_videos(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    videos = []
    for i in range(n):
        logits = torch.randn(5, 8, 8, generator=g) * 2
        gt = (torch.rand(5, 8, 8, generator=g) < 0.4).to(torch.uint8)
        if i % 3 == 0:
            gt[1] = 0
        videos.append((logits, gt))
    return videos


def test_binary_split_over_two_workers_equals_one():
    videos = random_binary_videos(7, seed=1)
    single = BinaryAVSMetric()
    for v in videos:
        single.update(*v)
    w0, w1 = BinaryAVSMetric(), BinaryAVSMetric()
    for i, v in enumerate(videos):
        (w0 if i % 2 == 0 else w1).update(*v)
    w0.merge_state(w1)
    expected, merged = single.compute(), w0.compute()
    for key in ("miou", "fscore", "miou_dataset", "fscore_dataset", "num_videos"):
        assert float(merged[key]) == pytest.approx(float(expected[key]), abs=1e-12), key


def test_binary_states_are_sums():
    # What a DDP all-reduce does: sum each state tensor.
    videos = random_binary_videos(4, seed=2)
    single, w0, w1 = BinaryAVSMetric(), BinaryAVSMetric(), BinaryAVSMetric()
    for i, v in enumerate(videos):
        single.update(*v)
        (w0 if i < 1 else w1).update(*v)
    summed = BinaryAVSMetric()
    for name in summed._defaults:
        setattr(summed, name, getattr(w0, name) + getattr(w1, name))
    summed._update_count = 1
    assert float(summed.compute()["fscore"]) == pytest.approx(float(single.compute()["fscore"]))


@pytest.mark.parametrize(
    "logits, gt, match",
    [
        (torch.zeros(2, 3), torch.zeros(2, 3), r"\[T, H, W\]"),
        (torch.zeros(2, 3, 3), torch.zeros(2, 3, 4), "gt shape"),
        (torch.zeros(1, 2, 2), torch.full((1, 2, 2), 2.0), "binary"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2), "floating point"),
    ],
)
def test_binary_rejects_bad_input(logits, gt, match):
    with pytest.raises(ValueError, match=match):
        BinaryAVSMetric().update(logits, gt)


def test_binary_compute_without_data_is_an_error():
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="before any video"):
        BinaryAVSMetric().compute()


# ----------------------------------------------------------------------------- semantic
def one_hot_logits(pred: torch.Tensor, c: int) -> torch.Tensor:
    """[T, H, W] class ids -> [T, C, H, W] logits whose argmax is pred."""
    return torch.nn.functional.one_hot(pred, c).permute(0, 3, 1, 2).float() * 5.0


def test_semantic_hand_computed_with_ignore_and_unseen_class():
    c = 4  # 0 background, classes 1..3; class 3 never appears
    labels = torch.tensor([[[0, 1], [1, 255]], [[2, 2], [0, 0]]])
    pred = torch.tensor([[[0, 1], [0, 2]], [[2, 0], [0, 0]]])  # the 2 in frame 1 is on an ignored pixel
    metric = SemanticAVSMetric(num_classes=c)
    metric.update(one_hot_logits(pred, c), labels)
    out = metric.compute()
    # Frame 1: class 0 I=1 U=2 (P=1/2,R=1 -> F=13/23); class 1 I=1 U=2 (P=1,R=1/2 -> F=0.8125);
    #          protocol: class 2 is predicted on the ignored pixel only -> counted, IoU 0, F 0.
    # Frame 2: class 0 I=2 U=3 (P=2/3,R=1 -> F=13/18); class 2 I=1 U=2 (F=0.8125).
    iou = [(0.5 + 2 / 3) / 2, 0.5, (0.0 + 0.5) / 2, 0.0]
    f = [(13 / 23 + 13 / 18) / 2, 0.8125, (0.0 + 0.8125) / 2, 0.0]
    assert out["per_class_iou"].tolist() == pytest.approx(iou, abs=1e-12)
    assert out["per_class_fscore"].tolist() == pytest.approx(f, abs=1e-12)
    assert float(out["miou"]) == pytest.approx(sum(iou) / 4, abs=1e-12)
    assert float(out["fscore"]) == pytest.approx(sum(f) / 4, abs=1e-12)
    # Drop-ignore variant (the old behaviour): frame 1 class 2 is not counted at all.
    iou_drop = [(0.5 + 2 / 3) / 2, 0.5, 0.5, 0.0]
    f_drop = [(13 / 23 + 13 / 18) / 2, 0.8125, 0.8125, 0.0]
    assert float(out["miou_drop_ignore"]) == pytest.approx(sum(iou_drop) / 4, abs=1e-12)
    assert float(out["fscore_drop_ignore"]) == pytest.approx(sum(f_drop) / 4, abs=1e-12)
    # Pooled, protocol: class 0 I=3 U=5, class 1 I=1 U=2, class 2 I=1 #pred=2 #gt=2 U=3
    # (P=R=1/2 -> F=1/2), class 3 nothing -> 0.
    f0 = 1.3 * 0.6 / (0.3 * 0.6 + 1.0)
    assert float(out["miou_dataset"]) == pytest.approx((0.6 + 0.5 + 1 / 3 + 0) / 4, abs=1e-12)
    assert float(out["fscore_dataset"]) == pytest.approx((f0 + 0.8125 + 0.5) / 4, abs=1e-12)
    # Pooled, drop-ignore (the old miou_dataset / fscore_dataset): class 2 I=1 U=2.
    assert float(out["miou_dataset_drop_ignore"]) == pytest.approx((0.6 + 0.5 + 0.5 + 0) / 4, abs=1e-12)
    assert float(out["fscore_dataset_drop_ignore"]) == pytest.approx((f0 + 0.8125 * 2) / 4, abs=1e-12)
    assert int(out["num_frames"]) == 2


def test_semantic_matches_literal_protocol_on_random_frames():
    c = 6
    g = torch.Generator().manual_seed(3)
    metric = SemanticAVSMetric(num_classes=c)
    all_logits, all_labels = [], []
    for _ in range(3):
        logits = torch.randn(4, c, 9, 7, generator=g)
        labels = torch.randint(0, c - 1, (4, 9, 7), generator=g)  # class c-1 only ever predicted
        metric.update(logits, labels)
        all_logits.append(logits)
        all_labels.append(labels)
    ref_miou, ref_f = reference_semantic(torch.cat(all_logits), torch.cat(all_labels), c)
    out = metric.compute()
    assert float(out["miou"]) == pytest.approx(ref_miou, abs=1e-6)
    assert float(out["fscore"]) == pytest.approx(ref_f, abs=1e-6)


SEMANTIC_SCALARS = (
    "miou",
    "fscore",
    "miou_drop_ignore",
    "fscore_drop_ignore",
    "miou_dataset",
    "fscore_dataset",
    "miou_dataset_drop_ignore",
    "fscore_dataset_drop_ignore",
    "num_frames",
)


def test_semantic_split_over_two_workers_equals_one():
    c = 5
    g = torch.Generator().manual_seed(4)
    clips = [(torch.randn(3, c, 6, 6, generator=g), torch.randint(0, c, (3, 6, 6), generator=g)) for _ in range(5)]
    clips[2][1][0, 0, :3] = 255
    single, w0, w1 = SemanticAVSMetric(c), SemanticAVSMetric(c), SemanticAVSMetric(c)
    for i, (logits, labels) in enumerate(clips):
        single.update(logits, labels)
        (w0 if i % 2 else w1).update(logits, labels)
    w0.merge_state(w1)
    expected, merged = single.compute(), w0.compute()
    for key in SEMANTIC_SCALARS:
        assert float(merged[key]) == pytest.approx(float(expected[key]), abs=1e-12), key


def test_semantic_rejects_bad_input():
    metric = SemanticAVSMetric(num_classes=3)
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        metric.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels shape"):
        metric.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        metric.update(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 7, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="collides"):
        SemanticAVSMetric(num_classes=3, ignore_index=1)


# ----------------------------------------------------------------------------- semantic, ignore label
def avss_frames(g: torch.Generator, t: int, h: int, w: int, c: int = 71, ignore: int = 255):
    """Random AVSS-like frames: background plus a few of the first 60 classes per frame (classes
    60..70 are never annotated), ~15% ignore-label pixels, logits that mostly agree with the
    label, and on ignore pixels a peak on any class (so some classes are predicted only there)."""
    labels = torch.zeros(t, h, w, dtype=torch.long)
    for i in range(t):
        present = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(59, generator=g)[:3] + 1])
        labels[i] = present[torch.randint(0, 4, (h, w), generator=g)]
    is_ignore = torch.rand(t, h, w, generator=g) < 0.15
    is_ignore[0, 0, :] = True  # an ignored strip, as padding would give
    labels[is_ignore] = ignore
    target = labels.clone()
    noisy = torch.rand(t, h, w, generator=g) < 0.25
    target[noisy | is_ignore] = torch.randint(0, c, (t, h, w), generator=g)[noisy | is_ignore]
    logits = torch.randn(t, c, h, w, generator=g)
    logits += 4.0 * torch.nn.functional.one_hot(target, c).permute(0, 3, 1, 2).float()
    return logits, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semantic_default_equals_reference_with_ignore_pixels(seed):
    c = 71
    g = torch.Generator().manual_seed(100 + seed)
    metric = SemanticAVSMetric(num_classes=c)  # default arguments = the protocol
    batches = [avss_frames(g, t, 10, 9) for t in (4, 3, 5)]
    for logits, labels in batches:
        metric.update(logits, labels)
    out = metric.compute()
    logits = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert bool((labels == 255).any())
    ref_miou, ref_f, ref_iou_pc, ref_f_pc = reference_avss_loop(logits, labels, c)
    assert float(out["miou"]) == pytest.approx(ref_miou, abs=1e-6)
    assert float(out["fscore"]) == pytest.approx(ref_f, abs=1e-6)
    np.testing.assert_allclose(out["per_class_iou"].numpy(), ref_iou_pc, atol=1e-6)
    np.testing.assert_allclose(out["per_class_fscore"].numpy(), ref_f_pc, atol=1e-6)
    # Some classes never occur (and score 0); in some frames a class is predicted only on ignore
    # pixels, so the protocol counts that frame for it and the drop-ignore variant does not.
    assert int((out["per_class_iou"] == 0).sum()) > 0
    assert bool((metric.class_count > metric.class_count_drop_ignore).any())
    # The drop-ignore variant is the reference fed with -1 on those pixels (its own "drop" label),
    # which is what this metric computed before the protocol followed the reference.
    drop_miou, drop_f, _, _ = reference_avss_loop(logits, torch.where(labels == 255, -1, labels), c)
    assert float(out["miou_drop_ignore"]) == pytest.approx(drop_miou, abs=1e-6)
    assert float(out["fscore_drop_ignore"]) == pytest.approx(drop_f, abs=1e-6)
    # Predictions on ignore pixels are false positives in the protocol only: lower scores.
    assert float(out["miou"]) < float(out["miou_drop_ignore"]) - 1e-4
    assert float(out["fscore"]) < float(out["fscore_drop_ignore"]) - 1e-4
    assert float(out["miou_dataset"]) < float(out["miou_dataset_drop_ignore"])


def test_semantic_drop_ignore_equals_protocol_without_ignore_pixels():
    g = torch.Generator().manual_seed(7)
    logits, labels = avss_frames(g, 4, 8, 8)
    labels[labels == 255] = 0
    out = SemanticAVSMetric(num_classes=71)
    out.update(logits, labels)
    out = out.compute()
    for key in ("miou", "fscore", "miou_dataset", "fscore_dataset"):
        assert float(out[key + "_drop_ignore"]) == float(out[key]), key
    ref_miou, ref_f, _, _ = reference_avss_loop(logits, labels, 71)
    assert float(out["miou"]) == pytest.approx(ref_miou, abs=1e-6)
    assert float(out["fscore"]) == pytest.approx(ref_f, abs=1e-6)


def test_semantic_negative_ignore_index_is_dropped_as_in_reference():
    # The reference zeroes the prediction where the label is < 0, so with ignore_index=-1 the
    # protocol itself drops those pixels, and equals the 255 metric's drop-ignore variant.
    c = 71
    g = torch.Generator().manual_seed(11)
    logits, labels = avss_frames(g, 5, 9, 8, ignore=-1)
    neg = SemanticAVSMetric(num_classes=c, ignore_index=-1)
    neg.update(logits, labels)
    neg = neg.compute()
    ref_miou, ref_f, _, _ = reference_avss_loop(logits, labels, c)
    assert float(neg["miou"]) == pytest.approx(ref_miou, abs=1e-6)
    assert float(neg["fscore"]) == pytest.approx(ref_f, abs=1e-6)
    pos = SemanticAVSMetric(num_classes=c)
    pos.update(logits, torch.where(labels == -1, 255, labels))
    pos = pos.compute()
    for key in ("miou", "fscore", "miou_dataset", "fscore_dataset"):
        assert float(neg[key]) == pytest.approx(float(pos[key + "_drop_ignore"]), abs=1e-12), key
        assert float(neg[key + "_drop_ignore"]) == pytest.approx(float(neg[key]), abs=1e-12), key


def test_semantic_without_ignore_label_rejects_255():
    metric = SemanticAVSMetric(num_classes=3, ignore_index=None)
    with pytest.raises(ValueError, match="outside"):
        metric.update(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 255, dtype=torch.long))
    metric.update(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    assert float(metric.compute()["miou"]) == pytest.approx(1 / 3)


def test_semantic_softmax_in_the_scores_dtype():
    # In float64, softmax([0, 1e-8]) picks class 1; in float32 both round to 0.5 and class 0
    # (the first) would win. The reference takes the softmax in the dtype it is given.
    logits = torch.tensor([0.0, 1e-8], dtype=torch.float64).view(1, 2, 1, 1)
    labels = torch.ones(1, 1, 1, dtype=torch.long)
    metric = SemanticAVSMetric(num_classes=2)
    metric.update(logits, labels)
    ref_miou, _, _, _ = reference_avss_loop(logits, labels, 2)
    assert float(metric.compute()["miou"]) == pytest.approx(ref_miou) == 0.5


def test_semantic_states_are_sums():
    # What a DDP all-reduce does: every state has dist_reduce_fx="sum"; summing them is exact.
    c = 71
    g = torch.Generator().manual_seed(5)
    clips = [avss_frames(g, 3, 6, 6) for _ in range(3)]
    single, w0, w1 = SemanticAVSMetric(c), SemanticAVSMetric(c), SemanticAVSMetric(c)
    for i, clip in enumerate(clips):
        single.update(*clip)
        (w0 if i < 1 else w1).update(*clip)
    assert set(single._reductions) == set(single._defaults)
    reductions = {getattr(fx, "__name__", "") for fx in single._reductions.values()}
    assert reductions == {"dim_zero_sum"}
    summed = SemanticAVSMetric(c)
    for name in summed._defaults:
        setattr(summed, name, getattr(w0, name) + getattr(w1, name))
    summed._update_count = 1
    expected, got = single.compute(), summed.compute()
    for key in SEMANTIC_SCALARS:
        assert float(got[key]) == pytest.approx(float(expected[key]), abs=1e-12), key
