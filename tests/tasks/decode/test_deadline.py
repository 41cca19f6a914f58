"""No clip can stall a run: corrupt H.264 decodes again and again without a hang (FFmpeg's
logging kept out of Python), and a clip that stalls anyway becomes a reject within its
deadline, its decoding process replaced."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from infra.storage import Storage
from tasks.clip import Clip, ClipRef, Reject
from tasks.decode.deadline import ChildDied, DeadlineExceeded, DeadlineRunner
from tasks.decode.sources import decode_or_reject
from tasks.decode.video import encode_video

REPO = Path(__file__).resolve().parents[3]


def textured_video(path: str, seconds: float = 3, fps: int = 20, h: int = 120, w: int = 160, **kwargs) -> str:
    """H.264 + AAC with enough detail per frame that the decoder runs its frame threads."""
    rng = np.random.default_rng(0)
    n = int(seconds * fps)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (xx + 3 * i) % 256
        frames[i, ..., 1] = (2 * yy + 5 * i) % 256
        frames[i, ..., 2] = ((xx // 16 + yy // 16 + i) % 2) * 200
    frames = frames + rng.integers(0, 40, frames.shape, dtype=np.uint8)
    audio = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 16000)) / 16000)).astype(np.float32)
    encode_video(path, frames, fps, audio, 16000, **kwargs)
    return path


def corrupt_h264_files(folder: Path) -> list[str]:
    """Bit errors (bytes flipped all over the media data) and truncations of good H.264."""
    folder.mkdir(parents=True, exist_ok=True)
    good = Path(textured_video(str(folder / "good.mp4"), options={"movflags": "faststart"}))
    data = good.read_bytes()
    paths = []
    for seed in range(4):
        flipped = bytearray(data)
        rng = np.random.default_rng(seed)
        for at in rng.integers(len(data) // 10, len(data), 40):
            flipped[at] ^= 0xFF
        paths.append(folder / f"flipped_{seed}.mp4")
        paths[-1].write_bytes(bytes(flipped))
    for fraction in (0.3, 0.6, 0.9):
        paths.append(folder / f"truncated_{int(fraction * 100)}.mp4")
        paths[-1].write_bytes(data[: int(len(data) * fraction)])
    moov_last = Path(textured_video(str(folder / "moov_last.mp4")))
    paths.append(folder / "truncated_moov.mp4")
    paths[-1].write_bytes(moov_last.read_bytes()[: moov_last.stat().st_size // 2])
    return [str(p) for p in paths]


@pytest.mark.slow
def test_corrupt_h264_decodes_many_times_in_a_row_without_a_hang(tmp_path):
    files = corrupt_h264_files(tmp_path / "corrupt")
    # In a child interpreter with a time limit, so that a hang fails this test instead of
    # stalling the suite. Before FFmpeg's logging was kept out of Python, this loop hung
    # (in avcodec_free_context, a decoder thread waiting for the GIL) within its first pass.
    script = textwrap.dedent(f"""
        import json, sys
        from infra.storage import Storage
        from tasks.clip import ClipRef, Reject
        from tasks.decode.sources import decode_or_reject
        files = {files!r}
        outcomes = []
        for rep in range(25):
            seen = []
            for i, path in enumerate(files):
                out = decode_or_reject(ClipRef(f"c{{i}}", "video", path), Storage(), 3, 32)
                seen.append(out.reason if isinstance(out, Reject) else "clip")
            outcomes.append(seen)
            print("pass", rep, flush=True)
        print(json.dumps(outcomes))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(outcomes) == 25
    assert all(o == outcomes[0] for o in outcomes)  # the same answer every time
    by_file = dict(zip((Path(f).stem for f in files), outcomes[0]))
    assert "moov atom not found" in by_file["truncated_moov"]
    assert all(by_file[f"truncated_{p}"] != "clip" for p in (30, 60))  # cut off: rejected, never half a clip


def test_a_stalled_clip_is_rejected_within_its_deadline_and_the_next_one_decodes(tmp_path):
    good = ClipRef("good", "video", textured_video(str(tmp_path / "good.mp4"), seconds=2))
    stall = str(tmp_path / "stall.mp4")
    os.mkfifo(stall)  # opening it blocks until someone writes: a source that never answers
    storage = Storage()

    warm = decode_or_reject(good, storage, 2, 32, deadline_s=120)  # starts this process's decoding child
    assert isinstance(warm, Clip)
    start = time.monotonic()
    out = decode_or_reject(ClipRef("stall", "video", stall), storage, 2, 32, deadline_s=2)
    waited = time.monotonic() - start
    assert isinstance(out, Reject) and out.stage == "decode" and out.clip_id == "stall"
    assert out.reason.startswith("deadline exceeded: not decoded within 2 s")
    assert 2 <= waited < 12  # the deadline, plus stopping the child; never the stall itself
    again = decode_or_reject(good, storage, 2, 32, deadline_s=120)  # a fresh child takes over
    assert isinstance(again, Clip) and again.content_hash() == warm.content_hash()
    here = decode_or_reject(good, storage, 2, 32)  # and it is what this process decodes itself
    assert here.content_hash() == warm.content_hash()


def test_deadline_runner_results_errors_stalls_and_crashes():
    runner = DeadlineRunner()
    try:
        assert runner.call("math:sqrt", (16.0,), seconds=60) == 4.0
        with pytest.raises(ValueError, match="math domain error"):  # the function's own error, as itself
            runner.call("math:sqrt", (-1.0,), seconds=60)
        with pytest.raises(DeadlineExceeded, match="no result within 0.5 s"):
            runner.call("time:sleep", (60,), seconds=0.5)
        with pytest.raises(ChildDied, match="exit code 3"):  # a crash: the child ends mid-call
            runner.call("os:_exit", (3,), seconds=60)
        assert runner.call("operator:add", (2, 3), seconds=60) == 5  # and the next call works
        with pytest.raises(ValueError, match="deadline must be > 0"):
            runner.call("math:sqrt", (1.0,), seconds=0)
    finally:
        runner.close()
