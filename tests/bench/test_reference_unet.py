"""bench/reference_unet.py: the quality benchmark's reference learner."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
from reference_unet import ReferenceUNet  # noqa: E402

from models.losses import targets_from_masks  # noqa: E402


def _batch(b: int = 2, t: int = 2, size: int = 32):
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(b, t, 3, size, size, generator=g)
    logmel = torch.randn(b, t, 96, 64, generator=g)
    masks = (torch.rand(b * t, size, size, generator=g) > 0.7).long()
    return frames, logmel, masks


def test_outputs_one_logit_map_per_frame_and_audio_starts_as_no_op():
    torch.manual_seed(0)
    model = ReferenceUNet().eval()
    frames, logmel, _ = _batch()
    out = model(frames, logmel)["masks"]
    assert out.shape == (4, 1, 32, 32)
    # FiLM starts as the identity: other audio, the same output until training moves it
    assert torch.allclose(out, model(frames, torch.randn_like(logmel))["masks"])
    assert model.segment({"masks": out}, (64, 64)).shape == (4, 64, 64)
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.rand(1, 2, 3, 36, 36), torch.randn(1, 2, 96, 64))


def test_one_step_trains_the_audio_path_and_a_silent_model_has_none():
    torch.manual_seed(0)
    model = ReferenceUNet().train()
    frames, logmel, masks = _batch()
    targets = targets_from_masks(masks, 1, has_gt=[True, False, True, True])
    losses = model.loss(model(frames, logmel), targets)
    losses["loss"].backward()
    assert losses["loss"].item() > 0
    assert all(f.proj.weight.grad.abs().sum() > 0 for f in model.film)
    assert model.audio_encoder is not None and any(p.grad is not None for p in model.audio_encoder.parameters())
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    optim.step()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(frames, logmel)["masks"], model(frames, torch.randn_like(logmel))["masks"])
    silent = ReferenceUNet(use_audio=False)
    assert silent.film is None and silent.audio_encoder is None
    assert silent(frames)["masks"].shape == (4, 1, 32, 32)
