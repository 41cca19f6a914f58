"""Maskige as COMBO builds it: area order, painting only zeros, the cap, the palette PNG."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from infra.schema.enrich import MaskigeConfig, SamConfig
from tasks.enrich.maskige import (
    ADE20K_PALETTE,
    MaskigeError,
    MaskigeMaker,
    build_maskige,
    classical_masks,
    maskige_png,
    maskige_rgb,
    read_maskige_png,
)


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_build_maskige_matches_hand_built_expectation():
    big = _box(6, 8, 0, 6, 0, 8)  # area 48: painted last, only where nothing else is
    mid = _box(6, 8, 1, 5, 1, 5)  # area 16
    small = _box(6, 8, 2, 3, 2, 6)  # area 4, overlaps mid
    maskige, info = build_maskige([big, mid, small])
    expected = np.array([
        [3, 3, 3, 3, 3, 3, 3, 3],
        [3, 2, 2, 2, 2, 3, 3, 3],
        [3, 2, 1, 1, 1, 1, 3, 3],
        [3, 2, 2, 2, 2, 3, 3, 3],
        [3, 2, 2, 2, 2, 3, 3, 3],
        [3, 3, 3, 3, 3, 3, 3, 3],
    ], dtype=np.uint8)
    np.testing.assert_array_equal(maskige, expected)
    assert maskige.dtype == np.uint8
    assert info == {"num_masks": 3, "painted": 3, "capped": 0, "capped_pixels": 0}


def test_uncovered_pixels_stay_zero_and_sam_records_are_accepted():
    a = _box(4, 4, 0, 2, 0, 2)
    b = _box(4, 4, 0, 1, 0, 4)
    records = [{"segmentation": a, "area": 4}, {"segmentation": b, "area": 4}]
    maskige, _ = build_maskige(records)
    # equal areas keep input order: a gets 1, b paints only its pixels outside a
    np.testing.assert_array_equal(maskige, np.array([[1, 1, 2, 2], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))


def test_cap_leaves_the_largest_masks_unpainted_and_records_it():
    masks = [_box(5, 5, 0, 1, 0, k + 1) for k in range(4)]  # areas 1, 2, 3, 4 along row 0
    masks.append(_box(5, 5, 2, 5, 0, 5))  # area 15: the largest, past the cap
    maskige, info = build_maskige(masks, max_index=3)
    assert info == {"num_masks": 5, "painted": 3, "capped": 2, "capped_pixels": 1 + 15}
    np.testing.assert_array_equal(maskige[0], [1, 2, 3, 0, 0])
    assert not maskige[2:].any()
    assert maskige.max() == 3


def test_no_masks_and_bad_masks():
    maskige, info = build_maskige([], shape=(3, 4))
    assert maskige.shape == (3, 4) and not maskige.any() and info["num_masks"] == 0
    with pytest.raises(ValueError, match="mask 1"):
        build_maskige([np.zeros((3, 4), bool), np.zeros((4, 4), bool)])
    with pytest.raises(ValueError, match="no masks and no shape"):
        build_maskige([])


def test_png_round_trip_is_lossless_palette_png():
    rng = np.random.default_rng(0)
    maskige = rng.integers(0, 150, size=(17, 23)).astype(np.uint8)
    data = maskige_png(maskige)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "P"
    palette = np.array(image.getpalette()[: 3 * 150], dtype=np.uint8).reshape(150, 3)
    np.testing.assert_array_equal(palette, ADE20K_PALETTE)
    np.testing.assert_array_equal(read_maskige_png(data), maskige)
    # what the model reads is what Pillow's RGB conversion of the PNG shows (index 0 included)
    np.testing.assert_array_equal(maskige_rgb(maskige), np.asarray(image.convert("RGB")))
    assert tuple(maskige_rgb(np.zeros((1, 1), np.uint8))[0, 0]) == (120, 120, 120)


def test_palette_is_the_ade20k_palette():
    assert ADE20K_PALETTE.shape == (150, 3)
    assert ADE20K_PALETTE[:3].tolist() == [[120, 120, 120], [180, 120, 120], [6, 230, 230]]
    assert ADE20K_PALETTE[-1].tolist() == [92, 0, 255]


def test_read_rejects_non_palette_png():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    with pytest.raises(ValueError, match="mode 'RGB'"):
        read_maskige_png(buf.getvalue())
    with pytest.raises(ValueError, match="not a readable"):
        read_maskige_png(b"not a png")


def _scene(n=2, h=48, w=64):
    frames = np.full((n, h, w, 3), 90, dtype=np.uint8)
    frames[:, 8:24, 8:30] = (220, 40, 40)
    frames[:, 28:44, 36:60] = (40, 200, 60)
    return frames


@pytest.mark.parametrize("method", ["felzenszwalb", "slic", "chroma"])
def test_classical_maker_paints_objects(method, caplog):
    cfg = MaskigeConfig(source="classical", classical_method=method, slic_n_segments=8, felzenszwalb_min_size=20)
    with caplog.at_level(logging.WARNING):
        maker = MaskigeMaker(cfg)
    assert "CLASSICAL" in caplog.text and "NOT SAM" in caplog.text
    frames = _scene()
    maskiges, infos = maker(frames)
    assert maskiges.shape == frames.shape[:3] and maskiges.dtype == np.uint8
    assert len(infos) == 2 and all(i["num_masks"] >= 3 for i in infos)
    # every pixel painted (a partition; chroma: objects + background); each flat object one index
    assert (maskiges > 0).all()
    assert len(np.unique(maskiges[0, 10:22, 10:28])) == 1
    masks = classical_masks(frames[0], cfg)
    assert all(m.dtype == bool for m in masks)
    prov = maker.provenance()
    assert prov["mask_source"] == "classical" and prov["checkpoint_sha256"] is None
    assert prov["generator"]["method"] == method


def test_chroma_segments_textured_objects_whole():
    yy, xx = np.mgrid[0:64, 0:80]
    frame = np.empty((64, 80, 3))
    frame[:] = (120, 110, 100)
    frame *= (1.0 - 0.3 * ((xx + yy) // 5 % 2))[..., None]  # striped background
    inside = (np.abs(yy - 30) < 12) & (np.abs(xx - 40) < 15)
    frame[inside] = np.array([40, 60, 220]) * (1.0 - 0.4 * (xx[inside] // 3 % 2))[:, None]  # striped object
    masks = classical_masks(frame.astype(np.uint8), MaskigeConfig(classical_method="chroma"))
    objects = [m for m in masks if m[30, 40]]
    assert len(objects) == 1 and (objects[0] == inside).mean() > 0.98
    assert len(masks) == 2  # the object and the background around it


def test_sam_without_checkpoint_falls_back_loudly(caplog):
    with caplog.at_level(logging.WARNING):
        maker = MaskigeMaker(MaskigeConfig(source="sam", sam=SamConfig(checkpoint=None)))
    assert "NOT SAM" in caplog.text
    prov = maker.provenance()
    assert prov["mask_source"] == "classical" and prov["requested_source"] == "sam"


def test_sam_tiny_maker_runs_and_records_provenance():
    cfg = MaskigeConfig(source="sam_tiny", sam=SamConfig(points_per_side=4, pred_iou_thresh=0.0,
                                                        stability_score_thresh=0.0, image_batch=2))
    maker = MaskigeMaker(cfg, device="cpu")
    maskiges, infos = maker(_scene(n=3))
    assert maskiges.shape == (3, 48, 64)
    assert all(i["num_masks"] >= 1 for i in infos)
    assert all(maskiges[i].max() == min(infos[i]["num_masks"], cfg.max_index) for i in range(3))
    prov = maker.provenance()
    assert prov["mask_source"] == "sam_tiny" and prov["model_type"] == "tiny"
    assert prov["generator"]["points_per_side"] == 4 and prov["generator"]["image_batch"] == 2


def test_sam_failure_names_the_frame(monkeypatch):
    cfg = MaskigeConfig(source="sam_tiny", sam=SamConfig(points_per_side=2, pred_iou_thresh=0.0,
                                                        stability_score_thresh=0.0, image_batch=2))
    maker = MaskigeMaker(cfg, device="cpu")
    original = maker.generator.generate
    calls = {"n": 0}

    def flaky(image):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("decoder blew up")
        return original(image)

    monkeypatch.setattr(maker.generator, "generate", flaky)
    with pytest.raises(MaskigeError, match="frame 2: SAM mask decoding failed.*decoder blew up"):
        maker(_scene(n=3))


def test_bad_frames_are_named():
    maker = MaskigeMaker(MaskigeConfig())
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W, 3\]"):
        maker(np.zeros((2, 8, 8), np.uint8))


def test_failure_names_the_frame(monkeypatch):
    import tasks.enrich.maskige as mod

    calls = {"n": 0}

    def flaky(frame, cfg):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return [np.ones(frame.shape[:2], bool)]

    monkeypatch.setattr(mod, "classical_masks", flaky)
    with pytest.raises(MaskigeError, match="frame 1"):
        MaskigeMaker(MaskigeConfig())(_scene(n=3))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="maskige.source"):
        MaskigeConfig(source="dino")
    with pytest.raises(ValueError, match="maskige.max_index"):
        MaskigeConfig(max_index=150)
    with pytest.raises(ValueError, match="sam.model_type"):
        SamConfig(model_type="vit_x")
    with pytest.raises(ValueError, match="sam.pred_iou_thresh"):
        SamConfig(pred_iou_thresh=1.5)
    assert MaskigeConfig(sam={"model_type": "vit_b"}).sam.model_type == "vit_b"
