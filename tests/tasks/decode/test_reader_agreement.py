"""The AVSBench reader and the video reader give the same clip for the same SynthAVS clip.

SynthAVS writes each clip twice: as an AVSBench folder (lossless PNG frames, 16-bit wav,
pickled log-mel) and as an H.264 + AAC mp4. Read both ways, they must agree up to the
codecs. Bounds from measurements (64 px, preset hard, crf 20, 3 clips): frame mean abs diff
3.8-5.2 of 255, PSNR 30.5-31.1 dB (24 clips of hard with 1-3 distractors, twins or not:
3.6-6.8, PSNR 26.5-32.4 dB: busier scenes lose more to H.264); log-mel mean abs diff 0.038-0.045 (values span ~6);
audio correlation 0.9992-0.9996.
"""
from __future__ import annotations

import numpy as np
import pytest

from infra.schema.synth import synth_preset
from infra.storage import Storage
from tasks.decode.sources import decode_clip, list_avsbench, list_videos
from tasks.synthavs import generate_synthavs

T = 5
SIZE = 64


@pytest.fixture(scope="module")
def synth_pairs(tmp_path_factory):
    """(AVSBench-read clip, video-read clip) for each of 2 tiny S4 SynthAVS clips."""
    out = str(tmp_path_factory.mktemp("synthavs"))
    storage = Storage()
    cfg = synth_preset(
        "hard", frame_height=SIZE, frame_width=SIZE, num_seconds=T,
        num_train_clips=1, num_val_clips=0, num_test_clips=1,
    )
    summary = generate_synthavs(cfg, out, storage, settings=("s4",), formats=("avsbench", "video"),
                                         progress=False)
    refs, rejects = list_avsbench(out, "s4", storage)
    assert rejects == [] and len(refs) == 2
    video_refs, video_rejects = list_videos(summary["roots"]["videos"], storage)
    assert video_rejects == [] and len(video_refs) == 2
    videos = {r.clip_id.rsplit("/", 1)[-1]: r for r in video_refs}  # ids: s4/{split}/{clip id}
    return [
        (decode_clip(ref, storage, T, SIZE), decode_clip(videos[ref.clip_id], storage, T, SIZE)) for ref in refs
    ]


def test_same_shapes_and_t(synth_pairs):
    for folder, video in synth_pairs:
        assert folder.clip_id.endswith(video.clip_id.rsplit("/", 1)[-1])
        assert folder.frames.shape == video.frames.shape == (T, SIZE, SIZE, 3)
        assert folder.logmel.shape == video.logmel.shape == (T, 96, 64)
        assert folder.audio.shape == video.audio.shape == (T * 16_000,)
        assert folder.meta["logmel_source"] == "pickle"
        assert video.meta["frame_times"] == [t + 0.5 for t in range(T)]  # fps is even: exact hits
        assert video.meta["padded_seconds"] == 0


def test_frames_agree_within_codec_tolerance(synth_pairs):
    for folder, video in synth_pairs:
        a, b = folder.frames.astype(np.float64), video.frames.astype(np.float64)
        mad = np.abs(a - b).mean()
        psnr = 10 * np.log10(255.0**2 / ((a - b) ** 2).mean())
        assert mad < 8.0 and psnr > 25.5, (folder.clip_id, mad, psnr)
        # the same second, not a neighbour: frame t of one reader is nearest to frame t of the other
        dist = np.abs(a[:, None] - b[None, :]).mean(axis=(2, 3, 4))  # [T, T]
        assert (dist.argmin(axis=1) == np.arange(T)).all(), dist.round(1)


def test_log_mel_and_audio_agree(synth_pairs):
    for folder, video in synth_pairs:
        diff = np.abs(folder.logmel - video.logmel)
        span = folder.logmel.max() - folder.logmel.min()
        assert diff.mean() < 0.1 and diff.mean() < 0.02 * span, (folder.clip_id, diff.mean(), span)
        assert np.corrcoef(folder.audio, video.audio)[0, 1] > 0.995


def test_each_s4_mask_is_paired_with_its_own_frame_and_sound():
    """The S4 train clip as training reads it (AVSBench folder): one annotated frame, the first (as
    AVSBench S4 train), whose mask is the generator's mask of that very frame (not a neighbour's),
    covering the object whose category is heard in that second; test clips annotate all five."""
    import tempfile

    from tasks.synthavs.generate import generate_clip

    cfg = synth_preset("hard", frame_height=SIZE, frame_width=SIZE, num_seconds=T,
                       num_train_clips=2, num_val_clips=0, num_test_clips=1)
    storage = Storage()
    with tempfile.TemporaryDirectory() as out:
        generate_synthavs(cfg, out, storage, settings=("s4",), formats=("avsbench",), progress=False)
        refs, rejects = list_avsbench(out, "s4", storage)
        assert rejects == []
        clips = {(ref.split, ref.clip_id.rsplit("_", 1)[-1]): decode_clip(ref, storage, T, SIZE) for ref in refs}
    checked = 0
    for (split, index), clip in clips.items():
        scene = generate_clip(cfg, "s4", split, int(index))
        truth = scene.clip.masks.astype(bool)
        gt = np.asarray(clip.gt_frames, bool)
        assert gt.tolist() == ([True] + [False] * (T - 1) if split == "train" else [True] * T), (split, gt)
        for t in np.flatnonzero(gt):
            mask = clip.masks[t].astype(bool)
            np.testing.assert_array_equal(mask, truth[t], err_msg=f"{clip.clip_id} frame {t}")
            others = [u for u in range(T) if u != t and (truth[u] != truth[t]).any()]
            assert all((mask != truth[u]).any() for u in others)  # not a neighbouring frame's mask
            heard = set(np.flatnonzero(scene.audible[t]) + 1)  # category ids audible in second t
            on_mask = set(np.unique(scene.category_maps[t][mask]).tolist()) - {0}
            assert on_mask <= heard, (clip.clip_id, t, on_mask, heard)
            checked += int(mask.any())
    assert checked >= 1  # at least one frame had a sounding object to check
