"""The pretraining set: its labels, its own seed, its chunks; the held-out scores' arithmetic."""
import dataclasses

import numpy as np
import pytest
import torch

from infra.config import ConfigError, compose
from infra.storage import Storage
from tasks.pretrain.data import chunk_names, make_chunk, pretrain_synth, read_chunks, set_url
from tasks.pretrain.run import average_precision, category_scores, embedding_scale
from tasks.synthavs.generate import generate_clip

SMALL = ["data.synth.frame_height=64", "data.synth.frame_width=64"]


def test_chunk_labels_every_pixel_and_every_second():
    cfg = compose(SMALL)
    synth = pretrain_synth(cfg)
    chunk = make_chunk(synth, "ms3", "train", 3, 2)
    assert chunk["frames"].shape == (2, 5, 64, 64, 3) and chunk["categories"].shape == (2, 5, 64, 64)
    assert chunk["logmel"].shape == (2, 5, 96, 64) and chunk["logmel"].dtype == np.float16
    assert chunk["audible"].shape == (2, 5, 8) and chunk["audible"].dtype == bool
    scene = generate_clip(synth, "ms3", "train", 4)
    assert chunk["clip_ids"][1] == scene.clip.clip_id
    for obj in scene.spec.objects:  # every object, sounding or not, carries its category on its pixels
        on = scene.id_maps == obj.index + 1
        assert on.any() and (chunk["categories"][1][on] == obj.category.id).all()
        for t in range(5):
            if obj.sounding[t]:
                assert chunk["audible"][1, t, obj.category.id - 1]
    assert (chunk["categories"][1][scene.id_maps <= 0] == 0).all()  # background and occluder
    if scene.spec.offscreen is not None:  # heard, though never on screen
        assert chunk["audible"][1, :, scene.spec.offscreen.category.id - 1].all()
    silent_categories = {o.category.id for o in scene.spec.objects if not o.sounds_at_all}
    silent_categories -= {o.category.id for o in scene.spec.objects if o.sounds_at_all}
    silent_categories -= {scene.spec.offscreen.category.id} if scene.spec.offscreen else set()
    assert not any(chunk["audible"][1, :, c - 1].any() for c in silent_categories)


def test_the_pretraining_set_has_its_own_seed_and_refuses_the_scored_one():
    cfg = compose(SMALL)
    assert pretrain_synth(cfg).seed == cfg.pretrain.seed != cfg.data.synth.seed
    assert set_url(cfg) != set_url(compose([*SMALL, "pretrain.seed=5"]))
    with pytest.raises(ConfigError, match="pretrain.seed=0 equals data.synth.seed"):
        pretrain_synth(compose([*SMALL, "pretrain.seed=0"]))
    scored = generate_clip(cfg.data.synth, "ms3", "train", 0).clip.frames
    assert not np.array_equal(scored, generate_clip(pretrain_synth(cfg), "ms3", "train", 0).clip.frames)


def test_chunks_cover_a_split_once_and_read_back(tmp_path):
    assert chunk_names("val", 5, 2) == [("val-00000.npz", 0, 2), ("val-00001.npz", 2, 2), ("val-00002.npz", 4, 1)]
    import io

    synth = dataclasses.replace(pretrain_synth(compose(SMALL)))
    storage = Storage()
    for name, first, n in chunk_names("train", 3, 2):
        buf = io.BytesIO()
        np.savez_compressed(buf, **make_chunk(synth, "s4", "train", first, n))
        storage.write_bytes(str(tmp_path / name), buf.getvalue())
    arrays = read_chunks(str(tmp_path), ["train-00000.npz", "train-00001.npz"], storage)
    assert len(arrays) == 3 and arrays.audible.shape == (3, 5, 8)
    with pytest.raises(ValueError, match="no chunk"):
        read_chunks(str(tmp_path), [], storage)


def test_average_precision_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.6]])
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    ap = average_precision(scores, labels)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)  # positives ranked 1st and 3rd
    assert np.isnan(ap[1])  # no positive: no AP


def test_category_scores_by_hand():
    # rows truth, columns prediction; classes background, 1, 2, 3
    conf = torch.tensor([[10, 0, 0, 0], [2, 6, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    s = category_scores(conf)
    assert s["iou"][1] == pytest.approx(6 / 10) and s["iou"][2] == 0.0  # 2: predicted, never true
    assert np.isnan(s["iou"][3])  # seen nowhere
    assert s["miou_categories"] == pytest.approx(0.3)  # the mean over categories 1 and 2
    assert s["iou_background"] == pytest.approx(10 / 12) and s["object_pixel_accuracy"] == pytest.approx(0.6)


def test_the_shipped_weights_match_their_card_and_load_into_every_tiny_model():
    """weights/synthavs-tiny: every file's sha256 as its card says, made from a pretraining set whose
    seed no scored split uses, and loadable by every tiny model of the registry."""
    from pathlib import Path

    from models.build import build_model
    from tasks.pretrain.run import check_release

    folder = Path(__file__).resolve().parents[3] / "weights" / "synthavs-tiny"
    card = check_release(str(folder), Storage())
    assert set(card["files"]) == {"backbone.pt", "vggish.pt"}
    assert card["data"]["seed"] == compose([]).pretrain.seed != compose([]).data.synth.seed
    assert card["held_out"]["category_miou"] > 0.5 and card["held_out"]["audio_map"] > 0.9
    weights = {"backbone_weights": str(folder / "backbone.pt"), "vggish_weights": str(folder / "vggish.pt")}
    for name in ("combo_tiny", "avsac_tiny", "tpavi_tiny", "moca_tiny", "moca_baseline_similarity_tiny"):
        model = build_model(name, **weights)
        assert model.audio_encoder.frozen, name  # a pretrained VGGish stays fixed


def test_embedding_scale_multiplies_every_embedding_by_one_factor_to_rms_one():
    from models.build import pretrain_registry

    torch.manual_seed(0)
    enc = pretrain_registry["encoders_tiny"]().audio_encoder.eval()
    with torch.no_grad():
        enc.embeddings[-2].weight.mul_(40.0)  # embeddings far from RMS 1, as a tagger-trained encoder leaves them
    logmel = np.random.default_rng(0).normal(size=(24, 96, 64)).astype(np.float32)
    with torch.no_grad():
        before = enc(torch.from_numpy(logmel))
    scaled = embedding_scale(enc.state_dict(), logmel, batch=10)
    enc.load_state_dict(scaled["state"])
    with torch.no_grad():
        after = enc(torch.from_numpy(logmel))
    assert scaled["norm_before"] == pytest.approx(float(before.norm(dim=1).mean()), rel=1e-5)
    assert float(after.norm(dim=1).mean()) == pytest.approx(128 ** 0.5, rel=1e-4) == scaled["norm_after"]
    torch.testing.assert_close(after, before * scaled["scale"], rtol=1e-4, atol=1e-5)  # one factor: the same geometry
    with pytest.raises(ValueError, match="all zero"):
        with torch.no_grad():
            enc.embeddings[-2].weight.zero_()
            enc.embeddings[-2].bias.zero_()
        embedding_scale(enc.state_dict(), logmel)
