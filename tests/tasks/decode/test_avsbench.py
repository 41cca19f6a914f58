"""The AVSBench reader on tiny hand-made S4, MS3 and AVSS folders laid out as the real data set."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from infra.storage import Storage
from tasks.media import voc_palette
from tasks.decode.logmel import log_mel_examples
from tasks.decode.safe_pickle import UnsafePickleError, load_array, loads
from tasks.decode.sources import decode_clip, decode_or_reject, list_avsbench

SIZE = 64
SR = 16_000


def frame_image(i: int, size: int = SIZE) -> np.ndarray:
    """A frame whose colour tells its index, with some texture."""
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = 30 * i + 20
    img[..., 1] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    img[..., 2] = 200 - 30 * i
    return img


def square_mask(i: int, size: int = SIZE, value: int = 255) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[8 + i : 30 + i, 10:40] = value
    return m


def tone(seconds: float, hz: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def save_png(path: str, array: np.ndarray, mode: str | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path)


def save_wav(path: str, audio: np.ndarray, sr: int = SR) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, audio, sr, subtype="PCM_16")


def save_logmel_pickle(path: str, wav_path: str, seconds: int = 5) -> torch.Tensor:
    """As AVSBench's preprocess does: a [T, 1, 96, 64] float tensor (requires_grad, non-leaf), plain pickle."""
    audio, _ = sf.read(wav_path, dtype="int16")
    lm = log_mel_examples(audio / 32768.0, seconds)
    tensor = torch.tensor(lm, requires_grad=True)[:, None, :, :].float()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(tensor, f)
    return tensor.detach()


def make_s4(base: str, rows: list[tuple[str, str, str]], pickles: bool = True) -> str:
    """rows: (name, category, split). Returns the Single-source folder."""
    root = os.path.join(base, "AVSBench_object", "Single-source")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "s4_meta_data.csv"), "w", encoding="utf-8") as f:
        f.write("name,start_time,category,split\n")
        for name, cat, split in rows:
            f.write(f"{name},0,{cat},{split}\n")
    for n, (name, cat, split) in enumerate(rows):
        d = os.path.join(root, "s4_data")
        for k in range(1, 6):
            save_png(f"{d}/visual_frames/{split}/{cat}/{name}/{name}_{k}.png", frame_image(k - 1))
        for k in [1] if split == "train" else range(1, 6):
            save_png(f"{d}/gt_masks/{split}/{cat}/{name}/{name}_{k}.png", square_mask(k - 1), "L")
        wav = f"{d}/audio_wav/{split}/{cat}/{name}.wav"
        save_wav(wav, tone(5, 440 + 110 * n))
        if pickles:
            save_logmel_pickle(f"{d}/audio_log_mel/{split}/{cat}/{name}.pkl", wav)
    return root


def make_ms3(base: str, rows: list[tuple[str, str]]) -> str:
    root = os.path.join(base, "AVSBench_object", "Multi-sources")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "ms3_meta_data.csv"), "w") as f:
        f.write("video_id,split\n")
        for name, split in rows:
            f.write(f"{name},{split}\n")
    for name, split in rows:
        d = os.path.join(root, "ms3_data")
        for k in range(1, 6):
            save_png(f"{d}/visual_frames/{name}/{name}.mp4_{k}.png", frame_image(k - 1))
            # MS3 masks as palette PNGs: index 1 is a dark colour, still foreground
            m = Image.fromarray((square_mask(k - 1) > 0).astype(np.uint8), "P")
            m.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
            os.makedirs(f"{d}/gt_masks/{split}/{name}", exist_ok=True)
            m.save(f"{d}/gt_masks/{split}/{name}/{name}_{k}.png")
        wav = f"{d}/audio_wav/{split}/{name}.wav"
        save_wav(wav, tone(5, 660))
        save_logmel_pickle(f"{d}/audio_log_mel/{split}/{name}.pkl", wav)
    return root


AVSS_CLASSES = {"background": 0, "dog": 1, "guitar": 2, "piano": 3}


def make_avss(base: str, rows: list[tuple[str, str, str]], rgb_labels: tuple[str, ...] = (),
              label2idx_text: str | None = None) -> str:
    """rows: (uid, label v1s|v1m|v2, split). Clips in rgb_labels get labels_rgb only.
    label2idx_text: the file's text (default: AVSS_CLASSES, 0-based values)."""
    root = os.path.join(base, "AVSBench_semantic")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "label2idx.json"), "w") as f:
        f.write(label2idx_text if label2idx_text is not None else json.dumps(AVSS_CLASSES))
    with open(os.path.join(root, "metadata.csv"), "w") as f:
        f.write("vid,uid,s_min,s_sec,a_obj,split,label\n")
        for uid, label, split in rows:
            f.write(f"{uid[:6]},{uid},0,0,dog,{split},{label}\n")
    palette = voc_palette(len(AVSS_CLASSES))
    for uid, label, split in rows:
        d = os.path.join(root, label, uid)
        count = 10 if label == "v2" else 5
        annotated = [0] if (label == "v1s" and split == "train") else range(count)
        for i in range(count):
            save_png(f"{d}/frames/{i}.jpg", frame_image(i % 6))
        for i in annotated:
            ids = square_mask(i, value=1) + (square_mask(0, value=2) * (i % 2 == 1)).T.copy()
            ids[0, :4] = 255  # ignore pixels are kept
            if uid in rgb_labels:
                rgb = palette[np.minimum(ids, len(AVSS_CLASSES) - 1)]
                rgb[ids == 255] = 0
                save_png(f"{d}/labels_rgb/{i}.png", rgb)
            else:
                save_png(f"{d}/labels_semantic/{i}.png", ids.astype(np.uint8), "L")
        save_wav(f"{d}/audio.wav", tone(count, 330))
    return root


@pytest.fixture()
def storage():
    return Storage()


def test_s4_reads_frames_masks_and_pickled_log_mel(tmp_path, storage):
    root = make_s4(str(tmp_path), [("vidA", "dog_barking", "train"), ("vidB", "race_car", "test")])
    refs, rejects = list_avsbench(str(tmp_path), "s4", storage)
    assert rejects == []
    assert [(r.clip_id, r.split, r.labels) for r in refs] == [("vidA", "train", ["dog_barking"]), ("vidB", "test", ["race_car"])]

    train = decode_clip(refs[0], storage, num_frames=5, frame_size=SIZE)
    assert train.frames.shape == (5, SIZE, SIZE, 3) and train.frames.dtype == np.uint8
    assert np.array_equal(train.frames[2], frame_image(2))  # PNG is lossless, no resize at 64 px
    assert train.gt_frames == [True, False, False, False, False]  # S4 train: frame 1 only
    assert set(np.unique(train.masks[0])) == {0, 1}
    assert np.array_equal(train.masks[0], (square_mask(0) > 0).astype(np.uint8))
    assert not train.masks[1:].any()
    stored = load_array(open(f"{root}/s4_data/audio_log_mel/train/dog_barking/vidA.pkl", "rb").read(), "vidA.pkl")
    assert np.array_equal(train.logmel, stored[:, 0])  # the pickle, as stored
    assert train.meta["logmel_source"] == "pickle"
    assert train.audio.shape == (5 * SR,) and train.setting == "s4" and train.split == "train"
    peak = np.argmax(np.abs(np.fft.rfft(train.audio[:SR])))
    assert peak == 440

    test = decode_clip(refs[1], storage, num_frames=5, frame_size=32)
    assert test.gt_frames == [True] * 5
    assert test.masks.shape == (5, 32, 32) and test.frames.shape == (5, 32, 32, 3)
    assert set(np.unique(test.masks)) == {0, 1}


def test_s4_without_pickle_computes_log_mel_from_wav(tmp_path, storage):
    root = make_s4(str(tmp_path), [("vidC", "cat_meowing", "val")], pickles=False)
    # a 44.1 kHz stereo wav (the real preprocessing asked for 16 kHz; not every copy obeys)
    stereo = np.stack([tone(5, 1000, 44_100), tone(5, 1000, 44_100)], axis=1)
    save_wav(f"{root}/s4_data/audio_wav/val/cat_meowing/vidC.wav", stereo, 44_100)
    (ref,), _ = list_avsbench(str(tmp_path / "AVSBench_object" / "Single-source"), "s4", storage, splits=["val"])
    assert "logmel" not in ref.members
    clip = decode_clip(ref, storage, 5, SIZE)
    assert clip.meta["logmel_source"] == "wav"
    assert clip.meta["source_sample_rate"] == 44_100 and clip.meta["source_channels"] == 2
    assert clip.audio.shape == (5 * SR,) and np.argmax(np.abs(np.fft.rfft(clip.audio[:SR]))) == 1000
    assert abs(np.abs(clip.audio[SR : 2 * SR]).max() - 0.4) < 0.01  # channel mean keeps the level
    np.testing.assert_allclose(clip.logmel, log_mel_examples(clip.audio, 5), atol=1e-5)


def test_splits_filter_and_bad_split_rows(tmp_path, storage):
    root = make_s4(str(tmp_path), [("a1", "dog_barking", "train"), ("b1", "dog_barking", "val")])
    with open(os.path.join(root, "s4_meta_data.csv"), "a") as f:
        f.write("c1,0,dog_barking,holdout\n")
    refs, rejects = list_avsbench(str(tmp_path), "s4", storage, splits=["val"])
    assert [r.clip_id for r in refs] == ["b1"]
    assert len(rejects) == 1 and rejects[0].clip_id == "c1" and "holdout" in rejects[0].reason


def test_ms3_palette_masks_are_binarised(tmp_path, storage):
    make_ms3(str(tmp_path), [("m1", "train"), ("m2", "val")])
    refs, rejects = list_avsbench(str(tmp_path), "ms3", storage)
    assert rejects == [] and [r.clip_id for r in refs] == ["m1", "m2"]
    clip = decode_clip(refs[0], storage, 5, SIZE)
    assert clip.gt_frames == [True] * 5  # MS3 train is fully annotated
    for k in range(5):
        assert np.array_equal(clip.masks[k], (square_mask(k) > 0).astype(np.uint8))
    assert clip.meta["logmel_source"] == "pickle" and clip.setting == "ms3"


def test_avss_class_ids_rgb_labels_and_padding(tmp_path, storage):
    make_avss(
        str(tmp_path),
        [("s_train", "v1s", "train"), ("m_val", "v1m", "val"), ("v2_test", "v2", "test")],
        rgb_labels=("m_val",),
    )
    refs, rejects = list_avsbench(str(tmp_path), "avss", storage)
    assert rejects == []
    by_id = {r.clip_id: r for r in refs}

    v1s = decode_clip(by_id["s_train"], storage, num_frames=5, frame_size=SIZE)
    assert v1s.gt_frames == [True, False, False, False, False]
    expected = square_mask(0, value=1)
    expected[0, :4] = 255
    assert np.array_equal(v1s.masks[0], expected)
    assert v1s.labels == ["dog"] and v1s.meta["avss_subset"] == "v1s"

    v1m = decode_clip(by_id["m_val"], storage, num_frames=5, frame_size=SIZE)  # colour-coded labels
    ids = square_mask(1, value=1) + square_mask(0, value=2).T
    assert np.array_equal(v1m.masks[1][1:], ids[1:])  # row 0 held ignore pixels, painted black = background
    assert v1m.labels == ["dog", "guitar", "piano"]  # 1 + 2 overlap as id 3

    # T = 10 on a 5-frame v1m clip: the last frame repeats, without ground truth
    padded = decode_clip(by_id["m_val"], storage, num_frames=10, frame_size=SIZE)
    assert padded.frames.shape[0] == 10 and padded.meta["padded_seconds"] == 5
    assert padded.gt_frames == [True] * 5 + [False] * 5
    assert np.array_equal(padded.frames[9], padded.frames[4]) and padded.audio.shape == (10 * SR,)

    v2 = decode_clip(by_id["v2_test"], storage, num_frames=10, frame_size=SIZE)
    assert v2.gt_frames == [True] * 10 and v2.meta["padded_seconds"] == 0
    assert v2.meta["logmel_source"] == "wav"


def test_avss_mask_with_unknown_class_id_is_rejected(tmp_path, storage):
    root = make_avss(str(tmp_path), [("bad_ids", "v1m", "test")])
    save_png(f"{root}/v1m/bad_ids/labels_semantic/3.png", np.full((SIZE, SIZE), 42, np.uint8), "L")
    (ref,), _ = list_avsbench(str(tmp_path), "avss", storage)
    out = decode_or_reject(ref, storage, 5, SIZE)
    assert out.clip_id == "bad_ids" and "mask 3" in out.reason and "42" in out.reason


def test_pickled_log_mel_is_loaded_without_running_code(tmp_path, storage):
    root = make_s4(str(tmp_path), [("evil", "dog_barking", "val")])
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(f"{root}/s4_data/audio_log_mel/val/dog_barking/evil.pkl", "wb") as f:
        pickle.dump(Payload(), f)
    (ref,), _ = list_avsbench(str(tmp_path), "s4", storage)
    out = decode_or_reject(ref, storage, 5, SIZE)
    assert out.clip_id == "evil" and out.stage == "decode"
    assert "evil.pkl" in out.reason and "system" in out.reason
    assert not marker.exists()


def test_safe_pickle_allow_list():
    x = torch.tensor(np.random.default_rng(0).normal(size=(5, 96, 64)), requires_grad=True)[:, None].float()
    for protocol in (2, 4, 5):
        assert torch.equal(loads(pickle.dumps(x, protocol=protocol), "x.pkl"), x.detach())
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        assert np.array_equal(loads(pickle.dumps(a, protocol=protocol), "a.pkl"), a)

    class Eval:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    with pytest.raises(UnsafePickleError, match=r"e\.pkl.*builtins\.eval"):
        loads(pickle.dumps(Eval()), "e.pkl")
    with pytest.raises(UnsafePickleError, match="object"):
        loads(pickle.dumps(np.array([1, "a"], dtype=object)), "o.pkl")
    with pytest.raises(ValueError, match="t.pkl"):
        loads(pickle.dumps(x)[:50], "t.pkl")


# -- T per clip (num_frames=None) and label2idx by key order -----------------------------
def decode_own_t(ref, storage, frame_size: int = SIZE):
    """tasks.decode.avsbench.decode with num_frames=None (each clip's own T), validated."""
    from tasks.decode import avsbench

    clip = avsbench.decode(ref, storage, None, frame_size)
    clip.validate()
    return clip


def test_avss_t_follows_the_label_unless_overridden(tmp_path, storage):
    make_avss(str(tmp_path), [("s_train", "v1s", "train"), ("m_val", "v1m", "val"), ("v2_test", "v2", "test")])
    refs, rejects = list_avsbench(str(tmp_path), "avss", storage)
    assert rejects == []
    by_id = {r.clip_id: r for r in refs}

    v1s, v1m, v2 = (decode_own_t(by_id[k], storage) for k in ("s_train", "m_val", "v2_test"))
    assert [c.num_frames for c in (v1s, v1m, v2)] == [5, 5, 10]
    assert v1s.gt_frames == [True] + [False] * 4 and v1m.gt_frames == [True] * 5 and v2.gt_frames == [True] * 10
    assert v2.audio.shape == (10 * SR,) and v2.logmel.shape == (10, 96, 64) and v2.masks.shape == (10, SIZE, SIZE)
    assert v1m.audio.shape == (5 * SR,) and v1m.meta["padded_seconds"] == 0 == v2.meta["padded_seconds"]
    assert {c.meta["num_frames_from"] for c in (v1s, v1m, v2)} == {"label"}
    # the tenth frame is the clip's own (JPEG, so nearly equal), not a repeat of an earlier one
    assert np.abs(v2.frames[9].astype(int) - frame_image(9 % 6)).mean() < 3
    assert np.abs(v2.frames[9].astype(int) - v2.frames[8]).mean() > 10

    # through the public entry point too (sources.decode_clip passes None on to this reader)
    through = decode_clip(by_id["v2_test"], storage, None, SIZE)
    assert through.num_frames == 10 and np.array_equal(through.masks, v2.masks)

    # an int overrides the label, for every clip
    forced = decode_clip(by_id["v2_test"], storage, num_frames=5, frame_size=SIZE)
    assert forced.num_frames == 5 and forced.meta["num_frames_from"] == "config"
    assert np.array_equal(forced.masks, v2.masks[:5])


def test_s4_and_ms3_own_t_is_five(tmp_path, storage):
    make_s4(str(tmp_path), [("vidA", "dog_barking", "val")])
    make_ms3(str(tmp_path), [("m1", "test")])
    (s4,), _ = list_avsbench(str(tmp_path), "s4", storage)
    (ms3,), _ = list_avsbench(str(tmp_path), "ms3", storage)
    for ref in (s4, ms3):
        clip = decode_own_t(ref, storage)
        assert clip.num_frames == 5 and clip.meta["num_frames_from"] == "setting"
        assert np.array_equal(clip.frames, decode_clip(ref, storage, 5, SIZE).frames)


def released_label2idx(names: list[str], base: int) -> str:
    """label2idx.json in the released form: 4-space indent, background first, values base.. in key order."""
    return json.dumps({n: i + base for i, n in enumerate(names)}, indent=4)


REAL_NAMES = ["background"] + [f"class_{i:02d}" for i in range(1, 71)]  # 71 entries, like the release


def test_real_shaped_label2idx_accepts_background_and_the_last_class(tmp_path, storage):
    """The released file has 1-based values ("background": 1 ... 71): ids are positions, so
    a mask holding background (0) and the last class (70) is accepted and named."""
    text = released_label2idx(REAL_NAMES, base=1)
    assert text.startswith('{\n    "background": 1,\n    "class_01": 2,') and text.endswith('    "class_70": 71\n}')
    root = make_avss(str(tmp_path), [("real_v2", "v2", "test"), ("real_rgb", "v1m", "val")],
                     rgb_labels=("real_rgb",), label2idx_text=text)
    ids = np.zeros((SIZE, SIZE), np.uint8)
    ids[10:30, 10:30] = 70
    ids[40:50, 5:20] = 1
    ids[0, :3] = 255
    save_png(f"{root}/v2/real_v2/labels_semantic/4.png", ids, "L")
    rgb = voc_palette(71)[np.where(ids == 255, 0, ids)]
    save_png(f"{root}/v1m/real_rgb/labels_rgb/2.png", rgb)
    refs, _ = list_avsbench(str(tmp_path), "avss", storage)
    by_id = {r.clip_id: r for r in refs}

    out = decode_or_reject(by_id["real_v2"], storage, 10, SIZE)
    assert not hasattr(out, "reason"), getattr(out, "reason", "")
    assert np.array_equal(out.masks[4], ids) and (out.masks[4] == 0).any()
    assert set(out.labels) == {"class_01", "class_02", "class_03", "class_70"}  # from every annotated frame
    coloured = decode_clip(by_id["real_rgb"], storage, 5, SIZE)
    assert np.array_equal(coloured.masks[2][1:], ids[1:]) and "class_70" in coloured.labels


@pytest.mark.parametrize("values", ["zero_based", "one_based", "shuffled"])
def test_label2idx_values_never_change_the_ids(tmp_path, storage, values, caplog):
    names = list(AVSS_CLASSES)  # background, dog, guitar, piano
    table = {"zero_based": [0, 1, 2, 3], "one_based": [1, 2, 3, 4], "shuffled": [3, 0, 2, 1]}[values]
    text = json.dumps(dict(zip(names, table)), indent=4)
    make_avss(str(tmp_path), [("m_val", "v1m", "val")], rgb_labels=("m_val",), label2idx_text=text)
    (ref,), _ = list_avsbench(str(tmp_path), "avss", storage)
    with caplog.at_level("WARNING", logger="tasks.decode.avsbench"):
        clip = decode_clip(ref, storage, 5, SIZE)
    expected = square_mask(1, value=1) + square_mask(0, value=2).T
    assert np.array_equal(clip.masks[1][1:], expected[1:])  # dog = 1, guitar = 2, piano = 3: key order
    assert clip.labels == ["dog", "guitar", "piano"]
    warned = any("neither" in r.getMessage() for r in caplog.records)
    assert warned == (values == "shuffled")


def test_label2idx_key_order_on_semantic_ids(tmp_path, storage):
    """labels_semantic ids index the key order: the same PNG names other classes when the keys move."""
    order = ["background", "piano", "dog", "guitar"]
    make_avss(str(tmp_path), [("m_val", "v1m", "val")], label2idx_text=released_label2idx(order, base=1))
    (ref,), _ = list_avsbench(str(tmp_path), "avss", storage)
    clip = decode_clip(ref, storage, 5, SIZE)
    assert clip.labels == ["piano", "dog", "guitar"]  # ids 1, 2, 3 present


def test_class_ids_checks_the_table(caplog):
    from tasks.decode.avsbench import class_ids

    assert class_ids({"background": 1, "dog": 2}) == {"background": 0, "dog": 1}
    assert class_ids({"background": 0, "dog": 1}) == {"background": 0, "dog": 1}
    for bad in ([1, 2], {}, {"background": "0"}, {"background": True}):
        with pytest.raises(ValueError, match="label2idx"):
            class_ids(bad)
    with caplog.at_level("WARNING", logger="tasks.decode.avsbench"):
        assert class_ids({"dog": 1, "background": 2}) == {"dog": 0, "background": 1}
    assert any("not 'background'" in r.getMessage() for r in caplog.records)


def test_wav_log_mel_uses_vggish_framing(tmp_path, storage):
    """Without a pickle the log-mel comes from the wav with VGGish's framing (0.96 s steps),
    the framing of AVSBench's pickles and of a pretrained VGGish."""
    root = make_avss(str(tmp_path), [("v2_test", "v2", "test")])
    rng = np.random.default_rng(1)
    ramp = np.linspace(0.01, 0.5, 10 * SR)  # loudness grows all along: where an example starts shows
    save_wav(f"{root}/v2/v2_test/audio.wav", (rng.uniform(-1, 1, 10 * SR) * ramp).astype(np.float32))
    (ref,), _ = list_avsbench(str(tmp_path), "avss", storage)
    clip = decode_own_t(ref, storage)
    assert clip.meta["logmel_source"] == "wav" and clip.meta["logmel_framing"] == "vggish"
    np.testing.assert_allclose(clip.logmel, log_mel_examples(clip.audio, 10, framing="vggish"), atol=1e-5)
    per_second = log_mel_examples(clip.audio, 10, framing="per_second")
    assert np.abs(clip.logmel[9] - per_second[9]).mean() > 0.05  # 0.36 s apart at t = 9
