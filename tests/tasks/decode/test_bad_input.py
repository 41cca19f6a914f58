"""Bad input: every broken clip becomes a Reject with its id and a reason; the run goes on,
and nothing is silently dropped (every listed file ends up a clip or a reject)."""
from __future__ import annotations

import os

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from infra.storage import Storage
from tasks.clip import Clip, Reject
from tasks.decode.sources import decode_many, decode_or_reject, list_avsbench, list_videos
from tasks.decode.video import encode_video

SR = 16_000
T = 3


def frames(seconds: float, fps: int = 10, size: int = 64) -> np.ndarray:
    n = int(round(seconds * fps))
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    out = np.zeros((n, size, size, 3), np.uint8)
    out[..., 0] = ramp[None, None, :]
    out[..., 1] = (np.arange(n) * 20 % 256)[:, None, None]
    return out


def tone(seconds: float, sr: int = 44_100) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def good_video(path: str, seconds: float = T, **kwargs) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    encode_video(path, frames(seconds), 10, tone(seconds), 44_100, **kwargs)
    return path


def zero_frame_video(path: str) -> None:
    """An mkv with a video track that holds no frames, and one second of sound."""
    with av.open(path, "w") as out:
        vs = out.add_stream("mpeg4", rate=10)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        aus = out.add_stream("pcm_s16le", rate=SR, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, SR), np.int16), format="s16", layout="mono")
        frame.sample_rate = SR
        frame.pts = 0
        out.mux(aus.encode(frame))
        out.mux(aus.encode())


def cut(src: str, dst: str, fraction: float = 0.5) -> None:
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])


def make_bad_folder(root: str) -> dict[str, str]:
    """A folder of good and bad files; returns clip id -> expected phrase (None = decodes)."""
    expect: dict[str, str | None] = {}
    os.makedirs(f"{root}/bad")
    good_video(f"{root}/train/good.mp4")
    expect["train/good"] = None
    good_video(f"{root}/train/vidéo à l'été ü.mp4")  # non-ASCII, spaces, quote: must work
    expect["train/vidéo à l'été ü"] = None
    good_video(f"{root}/val/short clip.mkv", seconds=1.6, vcodec="mpeg4", acodec="libmp3lame")
    expect["val/short clip"] = None  # shorter than T: padded, not rejected

    good_video(f"{root}/tmp/whole.mp4")
    cut(f"{root}/tmp/whole.mp4", f"{root}/bad/truncated_moov.mp4")  # moov atom at the end, cut off
    expect["bad/truncated_moov"] = "truncated or corrupt"
    good_video(f"{root}/tmp/fast.mp4", options={"movflags": "faststart"})
    cut(f"{root}/tmp/fast.mp4", f"{root}/bad/truncated_data.mp4")  # index intact, media data cut
    expect["bad/truncated_data"] = "truncated or corrupt"
    good_video(f"{root}/tmp/pcm.mkv", seconds=5, vcodec="mpeg4", acodec="pcm_s16le")
    cut(f"{root}/tmp/pcm.mkv", f"{root}/bad/truncated.mkv", 0.4)  # decodes cleanly, but too little
    expect["bad/truncated"] = "truncated or corrupt"
    for name in ("whole.mp4", "fast.mp4", "pcm.mkv"):
        os.remove(f"{root}/tmp/{name}")
    os.rmdir(f"{root}/tmp")

    with open(f"{root}/bad/notes.mp4", "w") as f:
        f.write("not a video at all\n" * 20)
    expect["bad/notes"] = "not a video"
    open(f"{root}/bad/empty.mp4", "wb").close()
    expect["bad/empty"] = "not a video: empty file"
    encode_video(f"{root}/bad/silent.mp4", frames(T), 10, None)
    expect["bad/silent"] = "no audio track"
    with av.open(f"{root}/bad/music.mp4", "w") as out:  # sound only, in an .mp4
        s = out.add_stream("aac", rate=SR, layout="mono")
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate, f.pts = SR, 0
        out.mux(s.encode(f))
        out.mux(s.encode())
    expect["bad/music"] = "not a video: no video track"
    zero_frame_video(f"{root}/bad/zero.mkv")
    expect["bad/zero"] = "zero frames"
    encode_video(f"{root}/bad/blink.mp4", frames(0.3), 10, tone(0.3), 44_100)
    expect["bad/blink"] = "too short"
    with open(f"{root}/bad/slides.pdf", "wb") as f:
        f.write(b"%PDF-1.4\n")
    expect["bad/slides"] = "not a video file (extension .pdf)"
    with open(f"{root}/train/good.json", "w") as f:
        f.write("{}")  # a sidecar: ignored, not a clip
    return expect


def test_video_folder_run_returns_good_clips_and_every_reject(tmp_path):
    root = str(tmp_path / "videos")
    expect = make_bad_folder(root)
    storage = Storage()
    refs, list_rejects = list_videos(root, storage)
    clips, decode_rejects = decode_many(refs, storage, num_frames=T, frame_size=32)
    rejects = list_rejects + decode_rejects

    # nothing silently dropped: every non-sidecar file is a clip or a reject, once
    assert sorted([c.clip_id for c in clips] + [r.clip_id for r in rejects]) == sorted(expect)
    assert sorted(c.clip_id for c in clips) == sorted(k for k, v in expect.items() if v is None)
    for r in rejects:
        assert isinstance(r, Reject) and r.source_uri.startswith(root)
        assert expect[r.clip_id] in r.reason, (r.clip_id, r.reason)
    by_id = {r.clip_id: r for r in rejects}
    assert "(moov atom not found; the 'mdat' box at byte" in by_id["bad/truncated_moov"].reason
    assert by_id["bad/slides"].stage == "list" and by_id["bad/zero"].stage == "decode"

    short = next(c for c in clips if c.clip_id == "val/short clip")
    assert short.meta["padded_seconds"] == 1 and short.split == "val"
    unicode_clip = next(c for c in clips if c.clip_id.startswith("train/vid"))
    assert unicode_clip.frames.shape == (T, 32, 32, 3) and unicode_clip.split == "train"


def test_videos_on_s3_good_and_bad(tmp_path, s3_storage):
    storage, bucket = s3_storage
    good = good_video(str(tmp_path / "ok clip ü.mp4"))
    storage.put_file(good, f"{bucket}/videos/test/ok clip ü.mp4")
    good_video(str(tmp_path / "whole.mp4"))
    cut(str(tmp_path / "whole.mp4"), str(tmp_path / "broken.mp4"))
    storage.put_file(str(tmp_path / "broken.mp4"), f"{bucket}/videos/test/broken.mp4")
    storage.write_text(f"{bucket}/videos/readme.rtf", "{\\rtf1}")

    refs, list_rejects = list_videos(f"{bucket}/videos", storage)
    assert [r.clip_id for r in refs] == ["test/broken", "test/ok clip ü"]
    assert [(r.clip_id, r.reason) for r in list_rejects] == [("readme", "not a video file (extension .rtf)")]
    clips, rejects = decode_many(refs, storage, num_frames=T, frame_size=32)
    assert [c.clip_id for c in clips] == ["test/ok clip ü"]
    assert clips[0].source_uri == f"{bucket}/videos/test/ok clip ü.mp4" and clips[0].split == "test"
    assert [(r.clip_id, r.stage) for r in rejects] == [("test/broken", "decode")]
    assert "truncated or corrupt" in rejects[0].reason


# -- AVSBench folders -------------------------------------------------------------------
def write_s4_clip(root: str, name: str, category: str, split: str, size: int = 64, mask_size=None) -> None:
    d = f"{root}/s4_data"
    for k in range(1, 6):
        os.makedirs(f"{d}/visual_frames/{split}/{category}/{name}", exist_ok=True)
        Image.fromarray(np.full((size, size, 3), 40 * k, np.uint8)).save(
            f"{d}/visual_frames/{split}/{category}/{name}/{name}_{k}.png"
        )
    mh, mw = mask_size or (size, size)
    for k in [1] if split == "train" else range(1, 6):
        os.makedirs(f"{d}/gt_masks/{split}/{category}/{name}", exist_ok=True)
        m = np.zeros((mh, mw), np.uint8)
        m[5:20, 5:20] = 255
        Image.fromarray(m, "L").save(f"{d}/gt_masks/{split}/{category}/{name}/{name}_{k}.png")
    os.makedirs(f"{d}/audio_wav/{split}/{category}", exist_ok=True)
    sf.write(f"{d}/audio_wav/{split}/{category}/{name}.wav", tone(5, SR), SR, subtype="PCM_16")


def make_s4(root: str, rows: list[tuple[str, str, str]]) -> str:
    base = f"{root}/AVSBench_object/Single-source"
    os.makedirs(base, exist_ok=True)
    with open(f"{base}/s4_meta_data.csv", "w", encoding="utf-8") as f:
        f.write("name,start_time,category,split\n")
        for name, category, split in rows:
            f.write(f'"{name}",0,{category},{split}\n')
    return base


def test_avsbench_missing_files_bad_masks_and_broken_members(tmp_path):
    rows = [
        ("good", "dog_barking", "test"),
        ("clip ü ñ 1", "dog_barking", "train"),  # non-ASCII and spaces: must work
        ("no_frame3", "dog_barking", "test"),
        ("no_wav", "race_car", "val"),
        ("no_mask", "race_car", "val"),
        ("small_mask", "race_car", "test"),
        ("bad_png", "race_car", "test"),
        ("bad_pickle", "race_car", "test"),
        ("never_written", "race_car", "train"),
    ]
    base = make_s4(str(tmp_path), rows)
    for name, category, split in rows[:-1]:
        write_s4_clip(base, name, category, split, mask_size=(48, 64) if name == "small_mask" else None)
    d = f"{base}/s4_data"
    os.remove(f"{d}/visual_frames/test/dog_barking/no_frame3/no_frame3_3.png")
    os.remove(f"{d}/audio_wav/val/race_car/no_wav.wav")
    os.remove(f"{d}/gt_masks/val/race_car/no_mask/no_mask_4.png")
    with open(f"{d}/visual_frames/test/race_car/bad_png/bad_png_2.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n broken")
    os.makedirs(f"{d}/audio_log_mel/test/race_car", exist_ok=True)
    with open(f"{d}/audio_log_mel/test/race_car/bad_pickle.pkl", "wb") as f:
        f.write(b"\x80\x04garbage")

    storage = Storage()
    refs, list_rejects = list_avsbench(str(tmp_path), "s4", storage)
    clips, decode_rejects = decode_many(refs, storage, num_frames=5, frame_size=32)
    assert sorted(c.clip_id for c in clips) == ["clip ü ñ 1", "good"]
    reasons = {r.clip_id: (r.stage, r.reason) for r in list_rejects + decode_rejects}
    assert len(reasons) == len(rows) - 2  # every bad row reported, once

    assert reasons["no_frame3"][0] == "list"
    assert "missing file(s): frame_2 (s4_data/visual_frames/test/dog_barking/no_frame3/no_frame3_3.png)" in reasons["no_frame3"][1]
    assert "audio (s4_data/audio_wav/val/race_car/no_wav.wav)" in reasons["no_wav"][1]
    assert "no_mask_4.png" in reasons["no_mask"][1]
    assert reasons["never_written"][0] == "list" and "and" in reasons["never_written"][1]  # many missing, counted
    assert reasons["small_mask"] == ("decode", "mask 1 is 64x48 but frames are 64x64 (small_mask_1.png)")
    assert reasons["bad_png"][0] == "decode" and "frame 2 is not a readable image" in reasons["bad_png"][1]
    assert "log-mel pickle bad_pickle.pkl" in reasons["bad_pickle"][1]

    unicode_clip = next(c for c in clips if c.clip_id == "clip ü ñ 1")
    assert unicode_clip.gt_frames == [True, False, False, False, False] and unicode_clip.masks[0].any()


def test_avsbench_on_s3_with_a_missing_row(tmp_path, s3_storage):
    storage, bucket = s3_storage
    base = make_s4(str(tmp_path), [("s3 clip é", "dog_barking", "val"), ("gone", "dog_barking", "val")])
    write_s4_clip(base, "s3 clip é", "dog_barking", "val")
    for dirpath, _, names in os.walk(tmp_path):
        for name in names:
            local = os.path.join(dirpath, name)
            storage.put_file(local, f"{bucket}/{os.path.relpath(local, tmp_path)}")
    refs, rejects = list_avsbench(f"{bucket}/", "s4", storage)
    assert [r.clip_id for r in refs] == ["s3 clip é"]
    assert [(r.clip_id, r.stage) for r in rejects] == [("gone", "list")] and "missing file(s)" in rejects[0].reason
    clip = decode_or_reject(refs[0], storage, 5, 32)
    assert isinstance(clip, Clip) and clip.gt_frames == [True] * 5 and clip.meta["logmel_source"] == "wav"


def test_unknown_kind_and_bad_arguments():
    from tasks.clip import ClipRef
    from tasks.decode.sources import decode_clip

    ref = ClipRef("x", "tiktok", "/nowhere")
    out = decode_or_reject(ref, Storage(), 5, 32)
    assert isinstance(out, Reject) and "unknown source kind" in out.reason
    with pytest.raises(ValueError, match="num_frames"):
        decode_clip(ref, Storage(), 0, 32)
    missing = decode_or_reject(ClipRef("gone", "video", "/nowhere/gone.mp4"), Storage(), 5, 32)
    assert isinstance(missing, Reject) and missing.reason.startswith("missing file")


def test_a_decode_error_survives_pickling_with_its_reason():
    import pickle

    from tasks.clip import ClipDecodeError

    back = pickle.loads(pickle.dumps(ClipDecodeError("s4/train/a", "moov atom not found")))
    assert (back.clip_id, back.reason, str(back)) == ("s4/train/a", "moov atom not found",
                                                     "clip 's4/train/a': moov atom not found")
