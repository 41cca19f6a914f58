"""The real segment-anything code on a tiny random SAM: batched generation, checkpoint loading."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam

from tasks.enrich.sam import BatchedSamMaskGenerator, SamCheckpointError, build_sam_tiny, load_sam, load_sam_with_sha256

# Thresholds low enough that a random model's masks come through, and no NMS, so that every
# point's masks do (a random SAM's masks overlap heavily; each is still a distinct pixel set).
GENERATOR = dict(points_per_side=4, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                 box_nms_thresh=1.0)


@pytest.fixture(scope="module")
def sam():
    torch.set_num_threads(1)
    return build_sam_tiny(seed=0, img_size=128)


def _frames(n=3, h=40, w=56):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 60, size=(n, h, w, 3), dtype=np.uint8)
    frames[0, 5:20, 5:30] = (200, 40, 40)
    frames[1, 20:38, 25:50] = (40, 200, 60)
    frames[2, 2:30, 30:54] = (30, 30, 220)
    return frames


def test_tiny_sam_is_built_from_segment_anythings_modules(sam):
    assert isinstance(sam, Sam)
    assert isinstance(sam.image_encoder, ImageEncoderViT)
    assert isinstance(sam.prompt_encoder, PromptEncoder)
    assert isinstance(sam.mask_decoder, MaskDecoder)
    assert sam.image_encoder.img_size == 128
    assert sum(p.numel() for p in sam.parameters()) < 500_000
    # same seed, same weights
    other = build_sam_tiny(seed=0, img_size=128)
    assert all(torch.equal(a, b) for a, b in zip(sam.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_batched_generator_equals_unbatched(sam, crop_n_layers):
    frames = _frames()
    kwargs = dict(GENERATOR, crop_n_layers=crop_n_layers)
    if crop_n_layers:  # 1 + 4 crops per frame, all encoded in batches of 2
        kwargs.update(points_per_side=3, crop_nms_thresh=1.0)
    plain = SamAutomaticMaskGenerator(sam, **kwargs)
    expected = [plain.generate(f) for f in frames]
    batched = BatchedSamMaskGenerator(sam, image_batch=2, **kwargs).generate_batch(frames)
    assert len(batched) == len(frames)
    assert all(len({m["segmentation"].tobytes() for m in e}) > 20 for e in expected)  # many masks came out
    for exp, got in zip(expected, batched):
        assert len(got) == len(exp)
        for a, b in zip(exp, got):
            np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
            assert a["bbox"] == b["bbox"] and a["area"] == b["area"] and a["crop_box"] == b["crop_box"]
            assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-5)
            assert a["stability_score"] == pytest.approx(b["stability_score"], abs=1e-5)


def test_encoder_really_runs_in_batches(sam, monkeypatch):
    sizes = []
    encoder = sam.image_encoder
    original = encoder.forward

    def spy(x):
        sizes.append(x.shape[0])
        return original(x)

    monkeypatch.setattr(encoder, "forward", spy)
    BatchedSamMaskGenerator(sam, image_batch=2, **GENERATOR).generate_batch(_frames(n=3))
    assert sizes == [2, 1]
    sizes.clear()  # with one crop layer: 5 encoder inputs per frame, frames taken 2 at a time
    BatchedSamMaskGenerator(sam, image_batch=2, **dict(GENERATOR, crop_n_layers=1)).generate_batch(_frames(n=3))
    assert sizes == [2] * 5 + [2, 2, 1]


def test_checkpoint_round_trip(sam, tmp_path):
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    loaded, digest = load_sam_with_sha256("tiny", str(path), device="cpu")
    assert len(digest) == 64
    for (name, a), b in zip(sam.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert load_sam("tiny", str(path), device="cpu").image_encoder.img_size == 128


def test_checkpoint_from_s3(sam, tmp_path, s3_storage):
    storage, bucket = s3_storage
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    storage.put_file(str(path), f"{bucket}/weights/sam_tiny.pth")
    loaded, digest = load_sam_with_sha256("tiny", f"{bucket}/weights/sam_tiny.pth", storage, device="cpu")
    assert torch.equal(loaded.mask_decoder.iou_token.weight, sam.mask_decoder.iou_token.weight)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrupt_missing_and_mismatched_checkpoints_name_the_uri(sam, tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"\x00definitely not a torch file")
    with pytest.raises(SamCheckpointError, match="corrupt.pth"):
        load_sam("tiny", str(bad), device="cpu")
    with pytest.raises(SamCheckpointError, match="missing.pth.*not found"):
        load_sam("tiny", str(tmp_path / "missing.pth"), device="cpu")
    tiny_ckpt = tmp_path / "tiny.pth"
    torch.save(sam.state_dict(), tiny_ckpt)
    with pytest.raises(SamCheckpointError, match=r"tiny.pth.*vit_b.*do not fit"):
        load_sam("vit_b", str(tiny_ckpt), device="cpu")
    with pytest.raises(ValueError, match="model_type"):
        load_sam("vit_q", str(tiny_ckpt))
