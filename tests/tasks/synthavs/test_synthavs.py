"""SynthAVS: deterministic bytes, exact masks, what the presets promise, the AVSBench layout."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from infra.schema.synth import SYNTH_PRESETS, SynthConfig, synth_preset
from infra.storage import Storage
from tasks.media import voc_palette
from tasks.synthavs import FRAME_OFFSET_S, generate_clip, generate_synthavs, render, sample_scene
from tasks.synthavs.categories import categories
from tasks.synthavs.sound import per_second_rms

REPO = Path(__file__).resolve().parents[3]
TINY = dict(frame_height=64, frame_width=64, num_train_clips=2, num_val_clips=1, num_test_clips=1)


def tiny(preset: str = "hard", **overrides) -> SynthConfig:
    return synth_preset(preset, **{**TINY, **overrides})


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The same tiny hard data set generated twice (every setting, both formats)."""
    roots = []
    for name in ("a", "b"):
        root = str(tmp_path_factory.mktemp(f"synth_{name}"))
        summary = generate_synthavs(tiny(), root, Storage(), progress=False)
        roots.append((root, summary))
    return roots


# -- config ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [
    ("num_categories", 24), ("num_categories", 0), ("frame_height", 95), ("video_fps", 25),
    ("silent_clip_prob", 1.5), ("num_twins_min", 3), ("loudness_min", 1.0), ("video_crf", 60),
])
def test_bad_config_names_the_key(key, value):
    with pytest.raises(ValueError, match=f"synth.{key}"):
        SynthConfig(**{key: value})


def test_unknown_preset_or_key_is_an_error():
    with pytest.raises(ValueError, match="synth.preset"):
        synth_preset("medium")
    with pytest.raises(ValueError, match="frame_size"):
        synth_preset("easy", frame_size=64)


@pytest.mark.parametrize("preset", ["easy", "hard", "sync"])
def test_yaml_lists_every_knob_with_its_preset_value(preset):
    block = yaml.safe_load((REPO / "conf" / "data" / f"synth_{preset}.yaml").read_text())["synth"]
    fields = [f.name for f in dataclasses.fields(SynthConfig)]
    assert list(block) == fields
    assert SynthConfig(**block) == synth_preset(preset)
    assert synth_preset("hard") == SynthConfig()  # dataclass defaults are the hard preset
    assert set(SYNTH_PRESETS["easy"]) < set(fields) and set(SYNTH_PRESETS["sync"]) < set(fields)
    assert sorted(p.stem for p in (REPO / "conf" / "data").glob("synth_*.yaml")) == sorted(
        f"synth_{name}" for name in SYNTH_PRESETS)  # one YAML per preset, no more


def test_compose_loads_the_presets():
    config = pytest.importorskip("infra.config")
    assert config.compose(["data=synth_easy"]).data.synth == synth_preset("easy")
    assert config.compose(["data=synth_hard"]).data.synth == synth_preset("hard")
    assert config.compose(["data=synth_sync"]).data.synth == synth_preset("sync")


# -- determinism -----------------------------------------------------------------------------

def test_same_seed_same_bytes(generated):
    (root_a, summary), (root_b, _) = generated
    a, b = _files(root_a), _files(root_b)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert sum(k.endswith(".mp4") for k in a) == 3 * 4  # mp4 bytes compared too (x264: one thread, no mbtree)
    assert summary["counts"] == {s: {"train": 2, "val": 1, "test": 1} for s in ("s4", "ms3", "avss")}


def test_mp4_bytes_do_not_depend_on_where_memory_lands(tmp_path):
    """The flake behind a failing same-bytes test: x264's macroblock-tree rate control (float
    SIMD, AVX-512 on this machine) gave one of two bitstreams for the same frames depending on
    the alignment of its buffers, i.e. on whatever the process allocated before. Shifting the
    heap between encodes reproduced it (about 1 encode in 4) until the writer turned mbtree off."""
    from tasks.synthavs import writers

    cfg = tiny()
    scene = generate_clip(cfg, "s4", "train", 0)
    n = scene.clip.num_frames * cfg.video_fps
    frames = [scene.render_at(i / cfg.video_fps) for i in range(n)]
    digests, ballast = set(), []
    for rep in range(24):
        ballast.append(bytearray(1 + 4099 * rep))  # moves where the encoder's buffers land
        path = str(tmp_path / f"{rep}.mp4")
        writers.write_mp4(path, iter(frames), n, scene.clip.audio, cfg.video_fps, cfg.video_crf,
                          cfg.frame_height, cfg.frame_width)
        digests.add(Path(path).read_bytes())
    assert len(digests) == 1


def test_different_seed_different_content():
    a = generate_clip(tiny(seed=0), "s4", "train", 0).clip
    b = generate_clip(tiny(seed=1), "s4", "train", 0).clip
    c = generate_clip(tiny(seed=0), "s4", "train", 1).clip
    assert a.content_hash() != b.content_hash() != c.content_hash() != a.content_hash()
    assert a.content_hash() == generate_clip(tiny(seed=0), "s4", "train", 0).clip.content_hash()


def test_clips_do_not_depend_on_python_hash_seed():
    code = ("from infra.schema.synth import synth_preset\nfrom tasks.synthavs import generate_clip\n"
            "print(generate_clip(synth_preset('hard', frame_height=64, frame_width=64), 'ms3', 'val', 4)"
            ".clip.content_hash())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    here = generate_clip(synth_preset("hard", frame_height=64, frame_width=64), "ms3", "val", 4).clip.content_hash()
    assert out.stdout.strip() == here


# -- exact masks -----------------------------------------------------------------------------

def _expected_masks(scene):
    """Ground truth rebuilt from each object's own silhouette, independently of render_frame."""
    spec, t_count = scene.spec, scene.spec.num_seconds
    h, w = spec.height, spec.width
    occ = render.occluder_mask(spec.occluder, h, w) if spec.occluder else np.zeros((h, w), bool)
    expected = np.zeros((t_count, h, w), np.uint8)
    covered = np.zeros((t_count, h, w), bool)
    for t in range(t_count):
        full = {o.index: render.object_mask(o, spec, t + FRAME_OFFSET_S) for o in spec.objects}
        for o in spec.objects:
            in_front = [full[p.index] for p in spec.objects if p.z > o.z]
            visible = full[o.index] & ~occ & ~np.any(in_front, axis=0) if in_front else full[o.index] & ~occ
            assert np.array_equal(scene.instance_masks[o.index, t], visible)
            if o.sounding[t]:
                expected[t][visible] = o.category.id if spec.setting == "avss" else 1
            covered[t] |= full[o.index]
        covered[t] |= occ
    return expected, covered


@pytest.mark.parametrize("setting", ["s4", "ms3", "avss"])
@pytest.mark.parametrize("preset", ["easy", "hard", "sync"])  # sync: twins in every clip
def test_every_mask_matches_its_objects_exactly(setting, preset):
    # Occluder and off-screen sound on every clip, so both are exercised.
    cfg = tiny(preset, frame_height=80, frame_width=96, occluder_prob=1.0, offscreen_sound_prob=1.0,
               silent_clip_prob=0.0)
    for index in range(3):
        scene = generate_clip(cfg, setting, "val", index)
        clip = scene.clip
        expected, covered = _expected_masks(scene)
        assert np.array_equal(clip.masks, expected)
        assert clip.gt_frames == [True] * clip.num_frames
        # Outside every silhouette the frame is exactly the background: nothing is drawn unmasked.
        assert np.array_equal(clip.frames[~covered], np.broadcast_to(scene.background, clip.frames.shape)[~covered])
        for t in range(clip.num_frames):
            assert np.array_equal(clip.frames[t], scene.render_at(t + FRAME_OFFSET_S))
            assert clip.masks[t].any() == any(o.sounding[t] for o in scene.spec.objects)
        # The off-screen sound's category is nowhere on screen and not a label.
        off = clip.meta["offscreen_category"]
        if off is not None:
            assert off not in clip.meta["visible_categories"] and off not in clip.labels
        if setting == "avss":
            assert set(np.unique(clip.masks)) <= {0} | {o.category.id for o in scene.spec.objects if o.sounds_at_all}


@pytest.mark.parametrize("setting", ["s4", "ms3", "avss"])
def test_silent_clips_have_empty_masks(setting):
    cfg = tiny(silent_clip_prob=1.0, offscreen_sound_prob=1.0)
    for index in range(2):
        clip = generate_clip(cfg, setting, "test", index).clip
        assert clip.meta["silent"] and clip.labels == []
        assert not clip.masks.any()
        assert clip.meta["visible_categories"]  # objects are on screen, just silent
        assert float(np.abs(clip.audio).max()) > 0.01  # noise and an off-screen sound are heard


# -- presets ---------------------------------------------------------------------------------

def test_easy_distractors_are_other_categories_and_colours_follow_category():
    cfg = tiny("easy", silent_clip_prob=0.0)
    for setting in ("s4", "ms3"):
        for index in range(4):
            spec = generate_clip(cfg, setting, "train", index).spec
            sources = {o.category.id for o in spec.objects if o.role == "source"}
            roles = [o.role for o in spec.objects]
            assert "twin" not in roles and "distractor" in roles
            for o in spec.objects:
                assert o.colour == o.category.colour and o.texture == o.category.texture
                if o.role == "distractor":
                    assert o.category.id not in sources


def _corr(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_sync_twins_do_not_follow_the_loudness_but_the_source_does():
    # No noise or off-screen sound here, so the audio's per-second RMS is the source's loudness.
    # `sync` puts twins in every clip (in `hard` only a share of clips has them).
    cfg = tiny("sync", frame_height=96, frame_width=96, background_noise=False, offscreen_sound_prob=0.0,
               silent_clip_prob=0.0)
    source_corrs, twin_corrs, colours_differ = [], [], 0
    for index in range(6):
        scene = generate_clip(cfg, "s4", "train", index)
        spec, t_count = scene.spec, scene.spec.num_seconds
        loudness = per_second_rms(scene.clip.audio, t_count)
        source = next(o for o in spec.objects if o.role == "source")
        twins = [o for o in spec.objects if o.role == "twin"]
        assert twins and all(tw.category.id == source.category.id for tw in twins)

        def size(o):  # area of the full silhouette, re-rendered
            return np.array([render.object_mask(o, spec, t + FRAME_OFFSET_S).sum() for t in range(t_count)], float)

        def brightness(o):
            return np.array([render.object_state(o, t + FRAME_OFFSET_S, spec.sync_size_amplitude,
                                                 spec.sync_brightness_amplitude)[4] for t in range(t_count)])

        source_corrs += [_corr(size(source), loudness), _corr(brightness(source), loudness)]
        for tw in twins:
            twin_corrs += [abs(_corr(size(tw), loudness)), abs(_corr(brightness(tw), loudness))]
            colours_differ += tw.colour != source.colour
    # Struck sounds (the bell of "ring") are silent before their first strike, so their first
    # second measures quieter than its level: a clip of these scenes goes down to ~0.88.
    assert min(source_corrs) > 0.85 and float(np.median(source_corrs)) > 0.99
    assert float(np.mean(twin_corrs)) < 0.4
    assert colours_differ > 0  # colour is drawn independently of category


def test_avss_ten_second_clips_are_v2():
    scene = generate_clip(tiny(avss_num_seconds=10), "avss", "train", 0)
    assert scene.spec.avss_label == "v2"
    assert scene.clip.frames.shape[0] == 10 and scene.clip.audio.shape == (10 * 16000,)
    assert scene.clip.logmel.shape == (10, 96, 64)


def test_hard_has_offscreen_sounds_noise_occlusion_and_varied_sizes():
    cfg = tiny("hard")
    specs = [sample_scene(cfg, "s4", "train", i) for i in range(40)]  # scenes only: cheap
    assert 4 <= sum(s.offscreen is not None for s in specs) <= 24
    assert 4 <= sum(s.occluder is not None for s in specs) <= 28
    assert 1 <= sum(s.silent for s in specs) <= 12
    assert all(s.noise_snr_db is not None for s in specs)
    assert len({round(s.noise_snr_db) for s in specs}) > 5
    radii = [o.radius / 64 for s in specs for o in s.objects]
    assert min(radii) < 0.1 and max(radii) > 0.22
    easy = [sample_scene(tiny("easy"), "s4", "train", i) for i in range(40)]
    assert not any(s.offscreen or s.occluder or s.noise_snr_db for s in easy)


# -- files -----------------------------------------------------------------------------------

def _csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_avsbench_layout_matches_the_real_data_set(generated):
    root, _ = generated[0]
    cfg = tiny()
    obj = os.path.join(root, "AVSBench_object")
    s4 = _csv(os.path.join(obj, "Single-source", "s4_meta_data.csv"))
    assert list(s4[0]) == ["name", "start_time", "category", "split"]
    assert [r["split"] for r in s4] == ["train", "train", "val", "test"]
    for row in s4:
        vid, split, cat = row["name"], row["split"], row["category"]
        base = os.path.join(obj, "Single-source", "s4_data")
        frames = sorted(os.listdir(os.path.join(base, "visual_frames", split, cat, vid)))
        masks = sorted(os.listdir(os.path.join(base, "gt_masks", split, cat, vid)))
        assert frames == [f"{vid}_{k}.png" for k in range(1, 6)]
        assert masks == ([f"{vid}_1.png"] if split == "train" else [f"{vid}_{k}.png" for k in range(1, 6)])
        mask = np.asarray(Image.open(os.path.join(base, "gt_masks", split, cat, vid, masks[0])))
        assert mask.dtype == np.uint8 and mask.ndim == 2 and set(np.unique(mask)) <= {0, 255}
        clip = generate_clip(cfg, "s4", split, int(vid.rsplit("_", 1)[1])).clip
        assert np.array_equal(mask // 255, clip.masks[0])
        logmel = pickle.loads(Path(base, "audio_log_mel", split, cat, f"{vid}.pkl").read_bytes())
        assert tuple(logmel.shape) == (5, 1, 96, 64) and np.array_equal(logmel.numpy()[:, 0], clip.logmel)
        with Image.open(os.path.join(base, "visual_frames", split, cat, vid, frames[0])) as im:
            assert im.mode == "RGB" and np.array_equal(np.asarray(im), clip.frames[0])

    ms3 = _csv(os.path.join(obj, "Multi-sources", "ms3_meta_data.csv"))
    assert list(ms3[0]) == ["video_id", "split"]
    base = os.path.join(obj, "Multi-sources", "ms3_data")
    for row in ms3:
        vid, split = row["video_id"], row["split"]
        frames = sorted(os.listdir(os.path.join(base, "visual_frames", vid)))
        assert frames == [f"{vid}.mp4_{k}.png" for k in range(1, 6)]
        assert sorted(os.listdir(os.path.join(base, "gt_masks", split, vid))) == [f"{vid}_{k}.png" for k in range(1, 6)]
        assert os.path.isfile(os.path.join(base, "audio_wav", split, f"{vid}.wav"))
        assert os.path.isfile(os.path.join(base, "audio_log_mel", split, f"{vid}.pkl"))

    sem = os.path.join(root, "AVSBench_semantic")
    rows = _csv(os.path.join(sem, "metadata.csv"))
    assert list(rows[0]) == ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"]
    text = Path(sem, "label2idx.json").read_text()
    label2idx = json.loads(text)
    # as released: 4-space indent, no final newline, background first, 1-based values in key order
    names = ["background"] + [c.name for c in categories(cfg.num_categories)]
    assert text.startswith('{\n    "background": 1,\n    "') and text.endswith("\n}")
    assert list(label2idx) == names and list(label2idx.values()) == list(range(1, len(names) + 1))
    assert text == json.dumps(label2idx, indent=4)
    assert [c.id for c in categories(cfg.num_categories)] == list(range(1, len(names)))  # position = mask id
    palette = voc_palette(len(label2idx))
    for row in rows:
        folder = os.path.join(sem, row["label"], row["uid"])
        assert sorted(os.listdir(os.path.join(folder, "frames"))) == [f"{i}.jpg" for i in range(5)]
        n_labels = 1 if (row["label"] == "v1s" and row["split"] == "train") else 5
        assert sorted(os.listdir(os.path.join(folder, "labels_semantic"))) == [f"{i}.png" for i in range(n_labels)]
        clip = generate_clip(cfg, "avss", row["split"], int(row["uid"].rsplit("_", 1)[1])).clip
        assert row["a_obj"].split(";") == clip.labels or (row["a_obj"] == "" and clip.labels == [])
        ids = np.asarray(Image.open(os.path.join(folder, "labels_semantic", "0.png")))
        rgb = np.asarray(Image.open(os.path.join(folder, "labels_rgb", "0.png")).convert("RGB"))
        assert np.array_equal(ids, clip.masks[0]) and np.array_equal(rgb, palette[ids])
        assert os.path.isfile(os.path.join(folder, "audio.wav"))
    assert list(palette[:4].tolist()) == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]


def test_wav_and_video_carry_the_clip(generated):
    import av
    import wave

    root, _ = generated[0]
    clip = generate_clip(tiny(), "ms3", "val", 0).clip
    with wave.open(os.path.join(root, "AVSBench_object", "Multi-sources", "ms3_data", "audio_wav", "val",
                                f"{clip.clip_id}.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    assert np.abs(pcm / 32767.0 - clip.audio).max() < 1e-4
    with av.open(os.path.join(root, "videos", "ms3", "val", f"{clip.clip_id}.mp4")) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert (v.codec_context.name, v.codec_context.pix_fmt, a.codec_context.name) == ("h264", "yuv420p", "aac")
        assert a.codec_context.sample_rate == 16000
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 5 * 10
    for t in range(5):  # the frame at t + 0.5 s is the PNG frame of second t (up to compression)
        assert np.abs(frames[10 * t + 5].astype(int) - clip.frames[t]).mean() < 8


def test_writes_through_s3(s3_storage):
    storage, bucket = s3_storage
    out = f"{bucket}/synthavs"
    cfg = tiny(num_train_clips=1, num_val_clips=1, num_test_clips=0)
    summary = generate_synthavs(cfg, out, storage, settings=("s4", "avss"), progress=False)
    assert summary["counts"] == {"s4": {"train": 1, "val": 1, "test": 0}, "avss": {"train": 1, "val": 1, "test": 0}}
    files = storage.walk_files(out)
    assert f"{out}/AVSBench_object/Single-source/s4_meta_data.csv" in files
    assert f"{out}/AVSBench_semantic/label2idx.json" in files
    assert f"{out}/synthavs_meta.json" in files
    assert sum(f.endswith(".mp4") for f in files) == 4
    clip = generate_clip(cfg, "s4", "val", 0).clip
    cat = clip.meta["category"]
    mask_url = f"{out}/AVSBench_object/Single-source/s4_data/gt_masks/val/{cat}/{clip.clip_id}/{clip.clip_id}_3.png"
    mask = np.asarray(Image.open(io.BytesIO(storage.read_bytes(mask_url))))
    assert np.array_equal(mask // 255, clip.masks[2])


# -- read back: T per clip and class ids through the AVSBench reader ------------------------

@pytest.mark.parametrize("seconds, labels", [(10, {"v2"}), (5, {"v1s", "v1m"})])
def test_avss_reads_back_with_its_own_t_and_ids(tmp_path, seconds, labels):
    """SynthAVS AVSS (label2idx.json with 1-based values, as released) read by the AVSBench
    reader with T from each clip's label: v2 clips give 10 frames, v1s / v1m 5, and the class
    ids (background 0 included) are the generator's."""
    from tasks.decode import avsbench
    from tasks.decode.sources import list_avsbench

    cfg = tiny(avss_num_seconds=seconds, num_train_clips=2, num_val_clips=1, num_test_clips=0,
               avss_multi_source_prob=0.5)
    storage = Storage()
    generate_synthavs(cfg, str(tmp_path), storage, settings=("avss",), formats=("avsbench",), progress=False)
    refs, rejects = list_avsbench(str(tmp_path), "avss", storage)
    assert rejects == [] and len(refs) == 3
    seen = set()
    for ref in refs:
        clip = avsbench.decode(ref, storage, None, cfg.frame_height)
        clip.validate()
        seen.add(clip.meta["avss_subset"])
        made = generate_clip(cfg, "avss", ref.split, int(ref.clip_id.rsplit("_", 1)[1])).clip
        assert clip.num_frames == made.num_frames == seconds
        gt = np.asarray(clip.gt_frames)
        assert np.array_equal(clip.masks[gt], made.masks[gt]) and (clip.masks[gt] == 0).any()
        assert sorted(clip.labels) == sorted({c.name for c in categories(cfg.num_categories)
                                              if (made.masks[gt] == c.id).any()})
    assert seen <= labels and seen


def test_synth_root_follows_the_generator_version(monkeypatch):
    from infra.config import compose
    from tasks.synthavs import generate

    cfg = compose([])
    before = generate.synth_root(cfg)
    monkeypatch.setattr(generate, "SYNTH_VERSION", generate.SYNTH_VERSION + 1)
    assert generate.synth_root(cfg) != before  # old folders (other log-mel framing) are not reused


def test_the_log_mel_example_of_each_frame_hears_that_seconds_sources():
    """Frame t is paired with log-mel example t (VGGish framing: 0.96 s from 0.96 t s, so 96 - 4t %
    of it lies in second t and the rest in second t - 1): in every clip, each example of a second in
    which nothing sounds is quieter than every example of a second in which something does."""
    cfg = tiny(background_noise=False, offscreen_sound_prob=0.0, silent_clip_prob=0.0)
    checked = 0
    for index in range(8):
        scene = generate_clip(cfg, "ms3", "train", index)  # sources switch on and off second by second
        energy = np.exp(scene.clip.logmel.astype(np.float64)).mean(axis=(1, 2))  # per example
        sounding = np.array([any(o.sounding[t] for o in scene.spec.objects) for t in range(5)])
        if sounding.any() and not sounding.all():
            assert energy[~sounding].max() < energy[sounding].min() / 2, (index, sounding, energy)
            checked += 1
    assert checked >= 2, "too few clips with silent seconds: the check would see nothing"
