"""TPAVI baseline: shapes, the TPAVI block against the explicit non-local matrix, gradients,
the audio ablation, losses and the builder."""

import pytest
import torch

from models.build import build_model, build_tpavi_tiny
from models.losses import targets_from_masks
from models.segmentation_loss import class_map_from_targets
from models.tpavi import TPAVIBlock, tpavi_loss

torch.set_num_threads(1)


def clip(b=2, t=5, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, size, size, generator=g), torch.randn(b, t, 96, 64, generator=g)


def wake_tpavi_blocks(model):
    """The TPAVI output BN starts at weight 0 (AVSBench's init: the block starts as the identity),
    which hides the audio path and its parameters' gradients; give it weight 1 for the checks."""
    for block in model.tpavi.values():
        torch.nn.init.ones_(block.w_z_norm.weight)


@pytest.mark.parametrize("t", [5, 10])
@pytest.mark.parametrize("num_classes, channels", [(1, 1), (3, 4)])
def test_output_shapes(t, num_classes, channels):
    torch.manual_seed(0)
    model = build_tpavi_tiny(num_classes=num_classes)
    frames, logmel = clip(t=t)
    out = model(frames, logmel)
    assert out["masks"].shape == (2 * t, channels, 64, 64)
    seg = model.segment(out, (32, 48))
    assert seg.shape == ((2 * t, 32, 48) if num_classes == 1 else (2 * t, channels, 32, 48))


def explicit_tpavi(block, x, audio):
    """AVSBench's TPAVI as written: the full (T h w) x (T h w) attention matrix."""
    b, t, c, h, w = x.shape
    n = t * h * w
    xl = x.permute(0, 1, 3, 4, 2).reshape(b, n, c)
    if audio is not None:
        keys_in = block.align(audio)[:, :, None, :].expand(b, t, h * w, c).reshape(b, n, c)  # audio repeated over h, w
    else:
        keys_in = xl
    f = block.theta(xl) @ block.phi(keys_in).transpose(1, 2) / n  # B x N x N
    y = f @ block.g(xl)
    z = block.w_z_norm(block.w_z(y).reshape(b * n, c)).reshape(b, n, c)
    return block.norm(xl + z).reshape(b, t, h, w, c).permute(0, 1, 4, 2, 3)


@pytest.mark.parametrize("audio_dim", [128, 0])
def test_tpavi_block_equals_explicit_non_local_matrix(audio_dim):
    torch.manual_seed(1)
    block = TPAVIBlock(8, audio_dim=audio_dim)
    torch.nn.init.normal_(block.w_z_norm.weight)
    torch.nn.init.normal_(block.w_z_norm.bias)
    block.eval()  # BN with running stats: the same normalisation on both paths
    block.w_z_norm.running_mean.normal_()
    x = torch.randn(2, 3, 8, 4, 5)
    audio = torch.randn(2, 3, 128) if audio_dim else None
    assert torch.allclose(block(x, audio), explicit_tpavi(block, x, audio), atol=1e-5)


def test_tpavi_block_starts_as_layer_norm_and_rejects_bad_audio():
    block = TPAVIBlock(8, audio_dim=128)
    x = torch.randn(1, 2, 8, 3, 3)
    expected = torch.nn.functional.layer_norm(x.permute(0, 1, 3, 4, 2), (8,)).permute(0, 1, 4, 2, 3)
    assert torch.allclose(block(x, torch.randn(1, 2, 128)), expected, atol=1e-5)
    with pytest.raises(ValueError, match="TPAVI audio"):
        block(x, torch.randn(1, 3, 128))


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = build_tpavi_tiny()
    wake_tpavi_blocks(model)
    frames, logmel = clip()
    gt = (torch.rand(2, 5, 64, 64) > 0.5).long()
    loss = tpavi_loss(model(frames, logmel), gt)["loss"]
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing


def test_use_audio_false_changes_outputs_and_ignores_logmel():
    torch.manual_seed(0)
    with_audio = build_tpavi_tiny()
    without = build_tpavi_tiny(use_audio=False)
    assert without.audio_encoder is None
    # Same weights wherever the two share a parameter; only the audio path differs.
    missing, unexpected = without.load_state_dict(with_audio.state_dict(), strict=False)
    assert not missing and all(k.startswith("audio_encoder.") or ".align." in k for k in unexpected)
    wake_tpavi_blocks(with_audio)
    wake_tpavi_blocks(without)
    with_audio.eval()
    without.eval()
    frames, logmel = clip()
    a = with_audio(frames, logmel)["masks"]
    assert not torch.allclose(a, without(frames, logmel)["masks"], atol=1e-4)
    # the visual-only model does not read the audio; the audio model does
    assert torch.equal(without(frames, logmel)["masks"], without(frames, torch.randn_like(logmel))["masks"])
    # (a randomly initialised VGGish maps any log-mel to nearly the same embedding: small change)
    assert not torch.equal(a, with_audio(frames, torch.randn_like(logmel))["masks"])
    assert torch.equal(without(frames, None)["masks"], without(frames, logmel)["masks"])


def test_parameter_counts_of_every_size():
    counts = {}
    for size in ("tiny", "r50", "pvt_b5"):
        with torch.device("meta"):  # construct only: no memory, no initialisation
            model = build_model(f"tpavi_{size}")
        counts[size] = sum(p.numel() for p in model.parameters())
        backbone = sum(p.numel() for p in model.backbone.parameters())
        audio = sum(p.numel() for p in model.audio_encoder.parameters())
        if size != "tiny":
            assert audio == 72_141_184  # full VGGish: 4 conv blocks + 12288-4096-4096-128
            assert model.heads[3].convs[0].in_channels == model.backbone.channels[3]
        counts[size + "_backbone"] = backbone
    assert counts["r50_backbone"] == 23_508_032  # timm ResNet-50 without its classifier
    assert counts["pvt_b5_backbone"] > 80_000_000
    assert counts["tiny"] < 2_000_000 < counts["r50"] < counts["pvt_b5"]


def test_frozen_audio_encoder_gets_no_gradient():
    torch.manual_seed(0)
    model = build_tpavi_tiny(freeze_audio=True)
    wake_tpavi_blocks(model)
    assert not any(p.requires_grad for p in model.audio_encoder.parameters())
    model.train()
    assert not model.audio_encoder.training
    frames, logmel = clip()
    tpavi_loss(model(frames, logmel), torch.zeros(2, 5, 64, 64))["loss"].backward()
    assert all(p.grad is None for p in model.audio_encoder.parameters())
    assert model.tpavi["0"].align.weight.grad is not None


@pytest.mark.parametrize("num_classes", [1, 3])  # S4/MS3: one sigmoid channel; AVSS: C + 1 with background 0
def test_loss_from_set_targets_matches_loss_from_maps(num_classes):
    torch.manual_seed(0)
    model = build_tpavi_tiny(num_classes=num_classes)
    assert model.out_channels == (1 if num_classes == 1 else num_classes + 1)
    frames, logmel = clip(b=1, t=5)
    ids = torch.randint(0, num_classes + 1, (5, 64, 64))
    has_gt = [True, False, True, True, False]
    targets = targets_from_masks(ids, num_classes, has_gt=has_gt)
    back, flags = class_map_from_targets(targets, (64, 64), torch.device("cpu"))
    assert flags.tolist() == has_gt
    assert torch.equal(back[flags], ids[flags])
    with torch.no_grad():
        out = model(frames, logmel)
    via_targets = model.loss(out, targets)["loss"]
    via_maps = tpavi_loss(out, ids.view(1, 5, 64, 64), torch.tensor([has_gt]))["loss"]
    assert float(via_targets) == pytest.approx(float(via_maps), rel=1e-6)


def test_registry_builds_tpavi_and_bad_arguments_fail_clearly():
    model = build_model("tpavi_tiny", num_classes=1, use_maskige=False, fusion="bilateral")
    assert model.out_channels == 1
    with pytest.raises(TypeError, match="lambda_ada"):
        build_tpavi_tiny(lambda_ada=10.0)
    with pytest.raises(KeyError, match="unknown model 'tpavi_huge'"):
        build_model("tpavi_huge")
    model = build_tpavi_tiny()
    frames, logmel = clip()
    with pytest.raises(ValueError, match="frames must be"):
        model(frames[:, :, :2], logmel)
    with pytest.raises(ValueError, match="logmel"):
        model(frames, logmel[:, :3])
    with pytest.raises(ValueError, match="logmel is required"):
        model(frames, None)


def test_channels_last_gives_the_same_masks():
    torch.manual_seed(0)
    model = build_tpavi_tiny().eval()
    wake_tpavi_blocks(model)
    frames, logmel = clip()
    expected = model(frames, logmel)["masks"]
    model.channels_last = True
    model = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(frames, logmel)["masks"], expected, atol=1e-4)
