"""The per-pixel losses of TPAVI and AVSAC, and class-id maps from the per-frame set targets."""

import math

import pytest
import torch

from models.losses import targets_from_masks
from models.segmentation_loss import class_map_from_targets, segmentation_loss

torch.set_num_threads(1)


def test_segmentation_loss_counts_only_annotated_frames():
    logits = torch.zeros(4, 1, 2, 2)
    logits[1] = 3.0  # frame 1 is confident foreground
    gt = torch.zeros(2, 2, 2, 2)  # B=2, T=2, all background
    flags = torch.tensor([[True, False], [True, False]])  # frames 0 and 2 annotated
    loss = segmentation_loss(logits, gt, flags)["loss_mask"]
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)  # frame 1's error is not counted
    everything = segmentation_loss(logits, gt)["loss_mask"]
    expected = (3 * math.log(2) + math.log1p(math.exp(3.0))) / 4
    assert float(everything) == pytest.approx(expected, abs=1e-6)
    none = segmentation_loss(logits.requires_grad_(), gt, torch.zeros(2, 2, dtype=torch.bool))["loss_mask"]
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_semantic_loss_ignores_label_and_resizes_logits():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2] = 10.0  # class 2 everywhere
    gt = torch.tensor([[[2, 255], [255, 255]]])
    assert float(segmentation_loss(logits, gt)["loss_mask"]) < 1e-3  # the one counted pixel is right
    big = segmentation_loss(logits, torch.full((1, 4, 4), 2))["loss_mask"]  # logits resized to 4 x 4
    assert float(big) < 1e-3
    with pytest.raises(ValueError, match="outside"):
        segmentation_loss(logits, torch.full((1, 2, 2), 5))



def test_class_map_keeps_ignored_pixels_ignored_and_frames_without_ground_truth_out():
    ids = torch.zeros(3, 4, 4, dtype=torch.long)
    ids[0, :2] = 2
    ids[0, 3, 3] = 255
    ids[2] = 1
    targets = targets_from_masks(ids, num_classes=2, has_gt=[True, False, True])
    back, has_gt = class_map_from_targets(targets, (4, 4), torch.device("cpu"))
    assert has_gt.tolist() == [True, False, True]
    assert torch.equal(back[0], ids[0])  # background 0, class 2 and the ignored pixel, all kept
    assert torch.equal(back[2], ids[2])
    assert (back[1] == 255).all()  # a frame without ground truth counts nowhere
    # the ignored pixel costs nothing, however wrong the logits are there
    logits = torch.zeros(3, 3, 4, 4)
    logits[0, 0, 3, 3] = 50.0
    with_ignored = segmentation_loss(logits, back, has_gt)["loss_mask"]
    logits[0, 0, 3, 3] = -50.0
    assert float(segmentation_loss(logits, back, has_gt)["loss_mask"]) == pytest.approx(float(with_ignored))
