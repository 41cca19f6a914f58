"""AVSAC: shapes, gradients, the bidirectional bridges, the AVFS loss by hand, the audio ablation."""

import math

import pytest
import torch

from models.avsac import AVSACModel, BidirectionalAVDecoder, avfs_loss, avsac_loss
from models.build import build_avsac_tiny, build_model
from models.losses import targets_from_masks
from models.segmentation_loss import segmentation_loss

torch.set_num_threads(1)


def clip(b=2, t=5, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, size, size, generator=g), torch.randn(b, t, 96, 64, generator=g)


@pytest.mark.parametrize("t", [5, 10])
@pytest.mark.parametrize("num_classes, channels", [(1, 1), (3, 4)])
def test_output_shapes(t, num_classes, channels):
    torch.manual_seed(0)
    model = build_avsac_tiny(num_classes=num_classes)
    frames, logmel = clip(t=t)
    out = model(frames, logmel)
    assert out["masks"].shape == (2 * t, channels, 64, 64)
    assert out["agv"].shape == out["audio"].shape == (2 * t, 64)
    seg = model.segment(out, (64, 64))
    assert seg.shape == ((2 * t, 64, 64) if num_classes == 1 else (2 * t, channels, 64, 64))


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = build_avsac_tiny()
    frames, logmel = clip()
    gt = (torch.rand(2, 5, 64, 64) > 0.5).long()
    avsac_loss(model(frames, logmel), gt)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing


def test_avfs_loss_by_hand():
    agv = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [3.0, 4.0]], requires_grad=True)
    audio = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0], [4.0, 3.0]], requires_grad=True)
    # cosines per frame: 1, 0, -1, 24/25 -> mean of 1 - cos = (0 + 1 + 2 + 1/25) / 4
    loss = avfs_loss(agv, audio)
    assert float(loss.detach()) == pytest.approx((0 + 1 + 2 + 0.04) / 4, abs=1e-6)
    loss.backward()
    assert audio.grad is None  # audio is the target: detached by default
    # d(1 - cos)/d agv for frame 0 (parallel) is 0; frame 1: -(a/|a| - cos * g/|g|)/|g| / 4
    assert agv.grad[0].abs().max() < 1e-6
    assert torch.allclose(agv.grad[1], torch.tensor([-1.0 / 2 / 4, 0.0]), atol=1e-6)
    both = avfs_loss(agv.detach(), audio, detach_audio=False)
    both.backward()
    assert audio.grad is not None
    with pytest.raises(ValueError, match="N x D"):
        avfs_loss(torch.zeros(3, 2), torch.zeros(2, 2))


def test_avfs_is_frame_wise():
    # Same vectors, frames shuffled between the two sides -> no longer aligned.
    a = torch.eye(3)
    assert float(avfs_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    assert float(avfs_loss(a, a[[1, 2, 0]])) == pytest.approx(1.0, abs=1e-6)


def test_avsac_loss_is_the_weighted_sum_of_its_parts():
    torch.manual_seed(0)
    model = build_avsac_tiny()
    frames, logmel = clip()
    with torch.no_grad():
        out = model(frames, logmel)
    gt = (torch.rand(2, 5, 64, 64) > 0.5).long()
    flags = torch.tensor([[True, False, False, False, False]] * 2)
    losses = avsac_loss(out, gt, flags, lambda_avfs=0.5, dice_weight=2.0)
    seg = segmentation_loss(out["masks"], gt, flags, dice_weight=1.0)
    avfs = avfs_loss(out["agv"], out["audio"])
    expected = seg["loss_mask"] + 2.0 * seg["loss_dice"] + 0.5 * avfs
    assert float(losses["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(losses["loss_avfs"]) == pytest.approx(float(avfs), rel=1e-6)


def test_bridges_link_both_branches():
    torch.manual_seed(0)
    bavd = BidirectionalAVDecoder(dim=16, num_layers=2, num_heads=2, ffn_dim=32)
    queries, query_pos = torch.randn(3, 4, 16), torch.randn(3, 4, 16)
    visual, visual_pos = torch.randn(3, 6, 16), torch.randn(3, 6, 16)
    agv, vga = bavd(queries, query_pos, visual, visual_pos)
    assert agv.shape == (3, 4, 16) and vga.shape == (3, 6, 16)
    # audio side reaches the visual tokens and the visual side reaches the queries
    agv2, vga2 = bavd(queries + 1.0, query_pos, visual, visual_pos)
    assert not torch.allclose(vga, vga2, atol=1e-4)
    agv3, _ = bavd(queries, query_pos, visual + 1.0, visual_pos)
    assert not torch.allclose(agv, agv3, atol=1e-4)
    # closing the bridge into the VGA branch (w -> 0) changes its second layer's output
    with torch.no_grad():
        bavd.bridge_to_vga.fill_(-30.0)
    _, vga_closed = bavd(queries, query_pos, visual, visual_pos)
    assert not torch.allclose(vga, vga_closed, atol=1e-4)


def test_use_audio_false_changes_outputs_and_ignores_logmel():
    torch.manual_seed(0)
    with_audio = build_avsac_tiny().eval()
    without = build_avsac_tiny(use_audio=False).eval()
    assert without.audio_encoder is None and without.audio_proj is None
    missing, unexpected = without.load_state_dict(with_audio.state_dict(), strict=False)
    assert not missing and all(k.startswith(("audio_encoder.", "audio_proj.")) for k in unexpected)
    frames, logmel = clip()
    a = with_audio(frames, logmel)
    b = without(frames, logmel)
    assert "audio" not in b
    assert not torch.allclose(a["masks"], b["masks"], atol=1e-4)
    assert torch.equal(b["masks"], without(frames, torch.randn_like(logmel))["masks"])
    assert not torch.equal(a["masks"], with_audio(frames, torch.randn_like(logmel))["masks"])
    # without audio there is no AVFS term
    gt = torch.zeros(2, 5, 64, 64)
    assert "loss_avfs" not in avsac_loss(b, gt)


def test_loss_from_set_targets():
    torch.manual_seed(0)
    model = build_avsac_tiny(num_classes=2)
    frames, logmel = clip(b=1)
    ids = torch.randint(0, 3, (5, 64, 64))
    with torch.no_grad():
        out = model(frames, logmel)
    via_targets = model.loss(out, targets_from_masks(ids, 2))
    via_maps = avsac_loss(out, ids)
    assert float(via_targets["loss"]) == pytest.approx(float(via_maps["loss"]), rel=1e-6)
    assert math.isfinite(float(via_targets["loss_dice"]))


def test_parameter_counts_and_registry():
    counts = {}
    for size in ("tiny", "r50", "pvt_b5"):
        with torch.device("meta"):
            model = build_model(f"avsac_{size}")
        assert isinstance(model, AVSACModel)
        counts[size] = sum(p.numel() for p in model.parameters())
        if size != "tiny":
            assert len(model.bavd.agv_layers) == 6 and model.query_feat.num_embeddings == 100
            assert not any(p.requires_grad for p in model.audio_encoder.parameters())  # frozen VGGish
    assert counts["tiny"] < 2_000_000 < counts["r50"] < counts["pvt_b5"]
    with pytest.raises(TypeError, match="num_points"):
        build_avsac_tiny(num_points=12)
