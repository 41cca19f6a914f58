"""Frame embeddings: DINO checkpoint layouts, the tiny ViT, and the classical colour/shape features."""
from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
import torch

from infra.schema.enrich import EmbedConfig
from tasks.enrich.embed import (
    CLASSICAL_DIM,
    EmbedCheckpointError,
    FrameEmbedder,
    build_vit,
    classical_embedding,
    clean_dino_state_dict,
    load_vit_weights,
)
from tasks.enrich.maskige import chroma_object_labels, chromaticity


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _frames(n=4, h=48, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_dino_tiny_embeds_unit_rows_deterministically():
    cfg = EmbedConfig(source="dino_tiny", image_size=32, batch_size=3)
    emb = FrameEmbedder(cfg, device="cpu")
    frames = _frames(5)
    out = emb(frames)
    assert out.shape == (5, emb.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # same seed, same weights; batching does not change a frame's embedding
    again = FrameEmbedder(EmbedConfig(source="dino_tiny", image_size=32, batch_size=5), device="cpu")(frames)
    np.testing.assert_allclose(out, again, atol=1e-5)
    assert not np.allclose(out[0], out[1])
    prov = emb.provenance()
    assert prov["embed_source"] == "dino_tiny" and prov["checkpoint_sha256"] is None and prov["dim"] == emb.dim
    assert emb(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, emb.dim)


def _dino_training_checkpoint(model: torch.nn.Module) -> dict:
    """A state dict laid out like DINO's full training checkpoint (teacher/student, DDP, head)."""
    def wrap(scale: float) -> dict:
        d = {f"module.backbone.{k}": v * scale for k, v in model.state_dict().items()}
        d["module.head.mlp.0.weight"] = torch.zeros(8, 4)  # DINO projection head: not the backbone
        d["module.head.last_layer.weight_g"] = torch.ones(8, 1)
        return d

    return {"teacher": wrap(1.0), "student": wrap(2.0), "epoch": 7, "args": argparse.Namespace(arch="vit_small")}


def test_clean_dino_state_dict_unwraps_teacher_module_backbone():
    model = build_vit("vit_small_patch16_224", 32, tiny=True)
    cleaned = clean_dino_state_dict(_dino_training_checkpoint(model))
    assert set(cleaned) == set(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(cleaned[k], v), k  # the teacher, not the student
    plain = clean_dino_state_dict(model.state_dict())
    assert set(plain) == set(model.state_dict())


def test_dino_checkpoint_from_s3_with_training_layout(tmp_path, s3_storage):
    storage, bucket = s3_storage
    source = build_vit("vit_tiny_patch16_224", 32, seed=3)
    path = tmp_path / "dino_full_checkpoint.pth"
    torch.save(_dino_training_checkpoint(source), path)
    uri = f"{bucket}/weights/dino.pth"
    storage.put_file(str(path), uri)
    cfg = EmbedConfig(source="dino", checkpoint=uri, arch="vit_tiny_patch16_224", image_size=32, batch_size=2)
    emb = FrameEmbedder(cfg, storage, device="cpu")
    for k, v in source.state_dict().items():
        assert torch.equal(emb.model.state_dict()[k], v), k
    out = emb(_frames(3))
    assert out.shape == (3, 192)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    prov = emb.provenance()
    assert prov["embed_source"] == "dino" and prov["checkpoint"] == uri and len(prov["checkpoint_sha256"]) == 64


def test_checkpoint_for_another_input_size_is_resampled():
    at_64 = build_vit("vit_small_patch16_224", 64, tiny=True)
    at_32 = build_vit("vit_small_patch16_224", 32, tiny=True, seed=1)
    load_vit_weights(at_32, at_64.state_dict(), "test")
    assert at_32.pos_embed.shape == (1, 1 + 4, 48)
    assert torch.equal(at_32.blocks[0].attn.qkv.weight, at_64.blocks[0].attn.qkv.weight)


def test_bad_checkpoints_name_the_uri(tmp_path):
    corrupt = tmp_path / "corrupt_dino.pth"
    corrupt.write_bytes(b"garbage, not a zip archive")
    cfg = EmbedConfig(source="dino", checkpoint=str(corrupt), arch="vit_tiny_patch16_224", image_size=32)
    with pytest.raises(EmbedCheckpointError, match="corrupt_dino.pth"):
        FrameEmbedder(cfg, device="cpu")
    with pytest.raises(EmbedCheckpointError, match="nowhere.pth.*not found"):
        FrameEmbedder(EmbedConfig(source="dino", checkpoint=str(tmp_path / "nowhere.pth"),
                                  arch="vit_tiny_patch16_224", image_size=32), device="cpu")
    other_arch = tmp_path / "tiny48.pth"
    torch.save(build_vit("vit_small_patch16_224", 32, tiny=True).state_dict(), other_arch)
    with pytest.raises(EmbedCheckpointError, match=r"tiny48.pth.*(wrong shape|missing)"):
        FrameEmbedder(EmbedConfig(source="dino", checkpoint=str(other_arch), arch="vit_tiny_patch16_224",
                                  image_size=32), device="cpu")


def test_dino_without_checkpoint_falls_back_loudly(caplog):
    with caplog.at_level(logging.WARNING):
        emb = FrameEmbedder(EmbedConfig(source="dino"))
    assert "NO DINO checkpoint" in caplog.text
    assert emb.provenance()["embed_source"] == "classical"
    assert emb(_frames(2)).shape == (2, CLASSICAL_DIM)


def _shape_frame(shape: str, cy: int, cx: int, r: int, colour, background_seed: int, size: int = 96):
    """A textured two-colour background with one object, striped like SynthAVS textures."""
    from skimage.draw import disk, polygon

    rng = np.random.default_rng(background_seed)
    yy, xx = np.mgrid[0:size, 0:size]
    a, b = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    t = (xx / size)[..., None]
    stripes = 1.0 - 0.3 * ((yy + xx) // 6 % 2)[..., None]  # brightness pattern
    img = (a * (1 - t) + b * t) * stripes
    if shape == "disk":
        rr, cc = disk((cy, cx), r, shape=(size, size))
    elif shape == "triangle":
        rr, cc = polygon([cy - r, cy + r, cy + r], [cx, cx - r, cx + r], shape=(size, size))
    else:  # square
        rr, cc = polygon([cy - r, cy - r, cy + r, cy + r], [cx - r, cx + r, cx + r, cx - r], shape=(size, size))
    texture = 1.0 - 0.4 * ((rr // 3) % 2)  # dark stripes on the object
    img[rr, cc] = np.asarray(colour)[None] * texture[:, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def test_classical_embedding_groups_shapes_not_backgrounds():
    frames = np.stack([
        _shape_frame("triangle", 40, 40, 18, (230, 40, 40), 1),
        _shape_frame("triangle", 60, 55, 12, (40, 60, 230), 2),  # other place, size, colour, background
        _shape_frame("disk", 40, 40, 18, (230, 40, 40), 1),  # same place, colour, background as the first
        _shape_frame("square", 50, 50, 15, (40, 200, 60), 3),
    ])
    emb = classical_embedding(frames)
    assert emb.shape == (4, CLASSICAL_DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb, classical_embedding(frames))  # deterministic
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]
    # the object is found as one region despite its stripes and the background's
    labels = chroma_object_labels(chromaticity(frames[0].astype(np.float32)))
    assert labels.max() == 1


def test_classical_handles_any_frame_size_and_empty_frames():
    frames = np.full((2, 30, 70, 3), 128, np.uint8)  # flat grey: no object at all
    out = classical_embedding(frames)
    assert out.shape == (2, CLASSICAL_DIM) and np.isfinite(out).all()
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W, 3\]"):
        classical_embedding(np.zeros((2, 8, 8), np.float32))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="embed.source"):
        EmbedConfig(source="clip")
    with pytest.raises(ValueError, match="embed.image_size"):
        EmbedConfig(image_size=30)
    with pytest.raises(ValueError, match="embed.arch"):
        FrameEmbedder(EmbedConfig(source="dino_tiny", arch="not_a_model"), device="cpu")


def test_tiny_backbone_embeds_frames_with_the_pretrained_tinycnn(tmp_path):
    """embed.source=tiny_backbone: the weights flows/pretrain.py releases (backbone.pt), the mean of
    the stride-32 map, unit rows; the provenance names the file and its sha256."""
    from models.backbones import IMAGENET_MEAN, IMAGENET_STD, TinyCNN

    torch.manual_seed(3)
    net = TinyCNN(channels=(16, 32, 64, 128)).eval()
    torch.save(net.state_dict(), tmp_path / "backbone.pt")
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    embedder = FrameEmbedder(EmbedConfig(source="tiny_backbone", checkpoint=str(tmp_path / "backbone.pt"),
                                         image_size=64), device="cpu")
    out = embedder(frames)
    assert out.shape == (3, 128) and embedder.dim == 128
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = torch.nn.functional.normalize(net(x)[-1].mean(dim=(2, 3)), dim=1).numpy()
    np.testing.assert_allclose(out, want, atol=1e-5)
    prov = embedder.provenance()
    assert prov["embed_source"] == "tiny_backbone" and prov["checkpoint"].endswith("backbone.pt")
    assert len(prov["checkpoint_sha256"]) == 64
    with pytest.raises(ValueError, match="embed.checkpoint"):
        EmbedConfig(source="tiny_backbone")
