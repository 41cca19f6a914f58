"""segment_video: a SynthAVS clip given as its mp4 gets exactly the masks the evaluation scores for
it; a video of any length gets a mask for every second (the reader agrees with the clip reader
frame for frame and sample for sample); an unreadable file, a missing checkpoint and a video
without audio are told apart clearly.

The data set here is made as tasks/preprocess.py makes one, without Ray: the clip decoded from
its mp4 by the video reader (with SynthAVS' ground truth attached), Maskiges and embeddings from
the preprocess actor's own class, the shard written by its shard writer, the manifest with its
content config. The checkpoint is a random combo_tiny whose foreground class bias is set so
that it marks about half of the pixels (a random model marks all or none, which would make the
comparison weak): the test needs the same masks on both paths, not good ones.
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from infra.config import compose, config_hash, to_dict
from infra.schema.shards import LoaderConfig
from infra.schema.synth import SynthConfig
from infra.storage import Storage, join
from models.build import build_model
from tasks.clip import ClipRef
from tasks.decode.sources import decode_clip
from tasks.decode.video import encode_video, read_av
from tasks.evaluate.report import evaluate_checkpoint
from tasks.evaluate.scoring import label_map
from tasks.evaluate.scoring import model_inputs, predict
from tasks.preprocess import ClipWork, EnrichStage, content_config, write_group
from tasks.segment.reader import WindowStream
from tasks.segment.run import SegmentError, mask_name, segment_video
from tasks.shards.loader import make_loader
from tasks.shards.manifest import Manifest, write_manifest
from tasks.synthavs.generate import generate_clip
from tasks.synthavs.writers import write_video_clip
from tasks.checkpoint import CheckpointMeta, save_checkpoint

torch.set_num_threads(1)

T = 5
SIZE = 64
OVERRIDES = [f"data.synth.frame_height={SIZE}", f"data.synth.frame_width={SIZE}", f"data.num_frames={T}"]


def synth_config(seconds: int) -> SynthConfig:
    return SynthConfig(frame_height=SIZE, frame_width=SIZE, num_seconds=seconds)


def video_dataset(storage: Storage, ds: str, scenes: list, videos: list[str]) -> None:
    """A test split of the clips decoded from their mp4s, made as tasks/preprocess.py makes shards."""
    cfg = compose(OVERRIDES)
    works = []
    for scene, url in zip(scenes, videos):
        ref = ClipRef(clip_id=scene.clip.clip_id, kind="video", uri=url, split="test", setting="s4")
        clip = decode_clip(ref, storage, cfg.data.num_frames, cfg.data.frame_size)
        clip.masks, clip.gt_frames = scene.clip.masks, [True] * T  # SynthAVS' ground truth at t + 0.5 s
        works.append(ClipWork(0, clip.clip_id, clip=clip))
    stage = EnrichStage(cfg.preprocess.maskige, cfg.preprocess.embed, storage)
    stage.add_maskiges(works)
    stage.add_embeddings(works)
    assert all(w.clip is not None and w.maskige is not None for w in works)
    digest = config_hash(content_config(cfg))
    sidecar = write_group(works, storage, ds, cfg.preprocess.shards, digest)
    write_manifest(Manifest(dataset_version="v-segtest", config_hash=digest, shards=[sidecar["shard"]],
                            provenance={**sidecar["provenance"], "config": content_config(cfg)}), ds, storage)


@torch.no_grad()
def centred_model(ds: str, storage: Storage) -> torch.nn.Module:
    """A random combo_tiny whose foreground score beats background's on about half of the pixels of
    the data set's clips: the foreground class's bias found by bisection."""
    torch.manual_seed(0)
    model = build_model("combo_tiny", num_classes=1).eval()
    cfg = LoaderConfig(batch_size=4, num_workers=0, shuffle_buffer=0, image_size=SIZE, augment=False)
    batch = next(iter(make_loader(ds, storage, cfg, split="test")))
    bias = model.decoder.class_embed.bias
    base = bias[1].item()
    lo, hi = -30.0, 30.0
    for _ in range(30):
        bias[1] = base + (lo + hi) / 2
        share = float((predict(model, model(**model_inputs(batch)), batch) > 0).float().mean())
        lo, hi = (lo, (lo + hi) / 2) if share > 0.5 else ((lo + hi) / 2, hi)
    return model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(storage, root, checkpoint, data set, scenes, mp4 urls): two 5 s S4 clips and a checkpoint
    trained (nominally) on the data set made from their mp4s."""
    root = str(tmp_path_factory.mktemp("segment"))
    storage = Storage()
    cfg = synth_config(T)
    scenes = [generate_clip(cfg, "s4", "test", i) for i in range(2)]
    videos = [write_video_clip(s, join(root, "synth"), storage, cfg.video_fps, cfg.video_crf) for s in scenes]
    ds = join(root, "datasets", "v-segtest")
    video_dataset(storage, ds, scenes, videos)
    model = centred_model(ds, storage)
    ckpt = join(root, "train", "r1", "checkpoint_epoch0001")
    save_checkpoint(ckpt, model, CheckpointMeta(model="combo_tiny", model_options={"num_classes": 1}, epoch=1,
                                                dataset_url=ds, dataset_version="v-segtest", setting="s4",
                                                config=to_dict(compose(OVERRIDES))))
    return storage, root, ckpt, ds, scenes, videos


def read_png(storage: Storage, url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(storage.read_bytes(url))))


def read_masks(storage: Storage, out: str, n: int) -> np.ndarray:
    return np.stack([read_png(storage, join(out, "masks", mask_name(s))) for s in range(n)])


def overlay_streams(path: str) -> tuple[int, list[str], tuple[int, int]]:
    """(video frames, stream kinds, frame size) of an mp4."""
    import av

    with av.open(path) as c:
        kinds = sorted(s.type for s in c.streams)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return len(frames), kinds, frames[0].shape[:2]


# -- (a) the key test ------------------------------------------------------------------------------
def test_segment_gives_the_masks_the_evaluation_scores(setup, tmp_path):
    storage, root, ckpt, ds, scenes, videos = setup
    scored: dict[str, np.ndarray] = {}

    def keep(clip_ids: list[str], pred: torch.Tensor) -> None:
        for clip_id, p in zip(clip_ids, pred):
            scored[clip_id] = np.stack([label_map(p[t], False).byte().numpy() for t in range(p.shape[0])])

    evaluate_checkpoint(ckpt, ds, storage, str(tmp_path / "eval"), split="test", device="cpu", batch_size=1,
                        num_overlays=0, progress=False, on_predictions=keep)
    assert set(scored) == {s.clip.clip_id for s in scenes}
    for scene, url in zip(scenes, videos):
        out = str(tmp_path / scene.clip.clip_id)
        result = segment_video(url, ckpt, storage, out, device="cpu")
        want = scored[scene.clip.clip_id]
        assert 0.1 < want.mean() < 0.9, "the centred model should mark part of the frame, not all or nothing"
        masks = read_masks(storage, out, T)
        assert masks.shape == (T, SIZE, SIZE) and set(np.unique(masks)) <= {0, 255}
        np.testing.assert_array_equal(masks // 255, want)  # the very masks the evaluation scored
        summary = json.loads(storage.read_text(join(out, "summary.json")))
        assert summary == {k: v for k, v in result.items() if k != "paths"}
        assert [s["second"] for s in summary["seconds"]] == list(range(T)) and summary["windows"] == 1
        assert [s["area"] for s in summary["seconds"]] == pytest.approx([float(m.mean()) for m in want], abs=1e-6)
        assert summary["padded_seconds"] == 0 and summary["window_s"] == T
        assert summary["input"]["has_audio"] and summary["input"]["audio"] == "aac" and summary["input"]["fps"] == 10
        assert summary["input"]["duration_s"] == pytest.approx(T) and summary["input"]["seconds"] == T
        pre = summary["preprocessing"]
        assert pre["origin"] == f"manifest {ds}" and pre["frame_size"] == SIZE and pre["frame_format"] == "jpg"
        assert pre["maskige"]["source"] == "classical" and pre["logmel_framing"] == "vggish"
        assert summary["message"].startswith("sounding object in ") and summary["message"] == result["message"]
        n, kinds, size = overlay_streams(join(out, "overlay.mp4"))
        assert n == T and kinds == ["audio", "video"] and size == (SIZE, SIZE)


# -- (b) bad input ---------------------------------------------------------------------------------
def test_unreadable_files_and_a_missing_checkpoint_are_named(setup, tmp_path):
    storage, root, ckpt, ds, scenes, videos = setup
    junk = tmp_path / "notes.mp4"
    junk.write_bytes(b"this is not a video at all, only some text" * 20)
    with pytest.raises(SegmentError, match=rf"cannot segment {junk}: not a video: FFmpeg finds no media container"):
        segment_video(str(junk), ckpt, storage, str(tmp_path / "o1"), device="cpu")
    data = open(videos[0], "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SegmentError, match=rf"cannot segment {cut}: truncated or corrupt"):
        segment_video(str(cut), ckpt, storage, str(tmp_path / "o2"), device="cpu", decode_deadline_s=None)
    with pytest.raises(SegmentError, match=r"cannot segment .*nowhere.mp4: missing file"):
        segment_video(str(tmp_path / "nowhere.mp4"), ckpt, storage, str(tmp_path / "o3"))
    with pytest.raises(SegmentError, match=r"checkpoint .*no_such_checkpoint does not exist"):
        segment_video(videos[0], str(tmp_path / "no_such_checkpoint"), storage, str(tmp_path / "o4"))
    with pytest.raises(SegmentError, match=rf"cannot segment {videos[0]}: deadline exceeded: the decoder gave no "
                                           r"answer within 0.001 s \(segment.decode_deadline_s"):
        segment_video(videos[0], ckpt, storage, str(tmp_path / "o5"), decode_deadline_s=0.001)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2" / "summary.json").exists()


# -- (c) no audio ----------------------------------------------------------------------------------
def test_a_video_without_audio_is_segmented_with_silence(setup, tmp_path):
    storage, root, ckpt, ds, scenes, videos = setup
    scene = scenes[0]
    silent = str(tmp_path / "silent.mp4")
    encode_video(silent, np.stack([scene.render_at(i / 10) for i in range(10 * T)]), fps=10, audio=None)
    result = segment_video(silent, ckpt, storage, str(tmp_path / "out"), device="cpu", decode_deadline_s=None)
    assert result["input"]["audio"] == "none" and result["input"]["has_audio"] is False
    assert result["message"].startswith("no audio track (segmented with silence): ")
    assert [s["second"] for s in result["seconds"]] == list(range(T))
    n, kinds, _ = overlay_streams(result["paths"]["overlay"])
    assert n == T and kinds == ["video"]


# -- (d) any length --------------------------------------------------------------------------------
def test_a_long_video_gets_a_mask_for_every_second(setup, tmp_path):
    storage, root, ckpt, ds, scenes, videos = setup
    seconds = 12
    cfg = synth_config(seconds)
    scene = generate_clip(cfg, "s4", "test", 5)
    url = write_video_clip(scene, str(tmp_path / "synth"), storage, cfg.video_fps, cfg.video_crf)

    # the windows are the clip reader's clips: frame for frame, sample for sample
    with WindowStream(url, "long", T, SIZE) as stream:
        windows = list(stream)
    assert [(w.start, w.real) for w in windows] == [(0, 5), (5, 5), (10, 2)]
    frames, audio, meta = read_av(url, "long", 3 * T, SIZE)  # one clip over all 15 s: padded as the last window
    np.testing.assert_array_equal(np.concatenate([w.frames for w in windows]), frames)
    np.testing.assert_array_equal(np.concatenate([w.audio for w in windows]), audio)
    first, first_audio, _ = read_av(url, "long", T, SIZE)  # what the preprocess reads of this file
    np.testing.assert_array_equal(windows[0].frames, first)
    np.testing.assert_array_equal(windows[0].audio, first_audio)
    assert meta["padded_seconds"] == 3

    out = str(tmp_path / "out")
    result = segment_video(url, ckpt, storage, out, device="cpu", batch_size=2)
    assert [s["second"] for s in result["seconds"]] == list(range(seconds))
    assert [s["time_s"] for s in result["seconds"]] == [s + 0.5 for s in range(seconds)]
    assert result["windows"] == 3 and result["padded_seconds"] == 3 and result["totals"]["seconds"] == seconds
    assert sorted(os.listdir(os.path.join(out, "masks"))) == [mask_name(s) for s in range(seconds)]
    masks = read_masks(storage, out, seconds)
    areas = [s["area"] for s in result["seconds"]]
    assert areas == pytest.approx([float((m > 0).mean()) for m in masks], abs=1e-6)
    assert result["totals"]["sounding_seconds"] == sum(a > 0 for a in areas)
    n, kinds, _ = overlay_streams(result["paths"]["overlay"])
    assert n == seconds and kinds == ["audio", "video"]


# -- semantic models -------------------------------------------------------------------------------
def test_a_semantic_model_writes_class_ids(setup, tmp_path):
    storage, root, ckpt, ds, scenes, videos = setup
    # Class k's score is feature channel k - 1 of the last layer, so that classes vary over the frame. Which
    # channels win depends on the random weights: the first seed whose masks hold background and at least two
    # classes is the one checked (a real test of the ids), and some seed of the first eight must give one.
    for seed in range(8):
        torch.manual_seed(seed)
        model = build_model("tpavi_tiny", num_classes=3)
        with torch.no_grad():
            last = model.output_conv[4]
            last.weight.zero_()
            last.bias.zero_()
            for k in (1, 2, 3):
                last.weight[k, k - 1] = 1.0
        semantic = str(tmp_path / f"avss_ckpt_{seed}")
        save_checkpoint(semantic, model, CheckpointMeta(model="tpavi_tiny", model_options={"num_classes": 3},
                                                        epoch=1, dataset_url=ds, setting="avss"))
        out = str(tmp_path / f"out_{seed}")
        result = segment_video(videos[0], semantic, storage, out, device="cpu", overlay=False)
        masks = read_masks(storage, out, T)
        if len(np.unique(masks)) >= 3:
            break
    assert len(np.unique(masks)) >= 3, "no seed of eight gave background and two classes"
    assert masks.max() <= 3 and result["num_classes"] == 3 and "overlay" not in result["paths"]
    for entry, m in zip(result["seconds"], masks):
        ids, counts = np.unique(m[m != 0], return_counts=True)
        assert entry["classes"] == {str(int(i)): pytest.approx(c / m.size, abs=1e-6) for i, c in zip(ids, counts)}
        assert entry["sounding"] == bool(len(ids))
    assert set(result["totals"]["class_seconds"]) == {str(int(i)) for i in np.unique(masks) if i}


# -- s3:// -----------------------------------------------------------------------------------------
def test_video_checkpoint_data_set_and_results_on_s3(setup, s3_storage, tmp_path):
    storage, root, ckpt, ds, scenes, videos = setup
    s3, bucket = s3_storage
    for local in storage.walk_files(ds):  # the data set, the video and the checkpoint in the bucket
        s3.put_file(local, join(bucket, "ds", os.path.relpath(local, ds)))
    s3.put_file(videos[0], join(bucket, "raw", "clip.mp4"))
    meta = json.loads(storage.read_text(join(ckpt, "meta.json")))
    meta["dataset_url"] = join(bucket, "ds")
    for name in ("model.pt", "train_state.pt"):
        s3.put_file(join(ckpt, name), join(bucket, "run", "ckpt", name))
    s3.write_text(join(bucket, "run", "ckpt", "meta.json"), json.dumps(meta))

    out = join(bucket, "segments", "clip")
    result = segment_video(join(bucket, "raw", "clip.mp4"), join(bucket, "run", "ckpt"), s3, out, device="cpu")
    assert result["preprocessing"]["origin"] == f"manifest {bucket}/ds"
    local = segment_video(videos[0], ckpt, storage, str(tmp_path / "local"), device="cpu", overlay=False)
    np.testing.assert_array_equal(read_masks(s3, out, T), read_masks(storage, str(tmp_path / "local"), T))
    assert result["seconds"] == local["seconds"]
    assert s3.exists(join(out, "overlay.mp4")) and json.loads(s3.read_text(join(out, "summary.json")))["windows"] == 1
