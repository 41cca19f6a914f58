"""Flow: a video + a trained checkpoint -> which pixels of each second make the sound.

Reads a video of any length (local or s3://, any container FFmpeg opens) in windows of T
seconds (the training clips' T, e.g. 5 for S4/MS3; one frame per second at t + 0.5 s), makes
each window into model input exactly as the checkpoint's training data set was made (its frame
size, log-mel framing, Maskige source and settings, frame encoding: read from the data set's
manifest), runs the model (CPU, or CUDA when there is one) and writes, under
``{output}/segments/<run>/<checkpoint>/<video name>/`` (or ``segment.output``):
``masks/NNNNNN.png`` (one per second: 0/255, or class ids for AVSS models), ``overlay.mp4``
(the sampled frames with the sounding pixels highlighted, and the video's own audio) and
``summary.json`` (per second: sounding or not, mask area; totals; the input's duration, fps and
audio). The last window is padded (its seconds past the end repeat the last frame) and the
padded seconds are left out of every output. A video without audio is segmented with silence
and the summary says ``"audio": "none"``. See tasks/segment/run.py for where this departs from
how the evaluation reads data.

    python -m flows.segment segment.video=clip.mp4 segment.checkpoint=outputs/train/r1/checkpoint_epoch0010
    python -m flows.segment segment.video=s3://raw/videos/street.mkv \\
        segment.checkpoint=s3://avs/train/combo-s4/checkpoint_epoch0030 segment.output=s3://avs/segments/street
    python -m flows.segment segment.video=clip.mp4 segment.checkpoint=... segment.device=cpu segment.overlay=false
"""
from __future__ import annotations

import posixpath

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.common import Overrides, avs_flow, main
from infra.config import ConfigError, compose
from infra.storage import Storage, absolute, join
from tasks.segment.run import segment_video, video_name

segment_task = task(segment_video, name="segment-video", cache_policy=NO_CACHE)


def segment_folder(output: str, checkpoint: str, video: str) -> str:
    """{output}/segments/<run>/<checkpoint>/<video name>: run is the checkpoint's parent folder."""
    path = checkpoint.split("://", 1)[-1].rstrip("/")
    name, run = posixpath.basename(path), posixpath.basename(posixpath.dirname(path))
    return join(output, "segments", *([run] if run else []), name or "checkpoint", video_name(video))


@avs_flow(name="segment")
def segment(overrides: Overrides = None, video: str | None = None, checkpoint: str | None = None,
            output: str | None = None) -> dict:
    """Segment a video with a trained checkpoint: per-second masks, an overlay video, a summary.

    Args:
        overrides: Hydra override strings, as on the command line (``segment.*`` keys: video,
            checkpoint, output, model, device, dataset, window_s, model_size, batch_size, overlay,
            overlay_max_side, decode_deadline_s, sam_checkpoint). Never credentials (see
            infra/schema/storage.py).
        video: the video file (local or s3://); wins over segment.video.
        checkpoint: the checkpoint folder (local or s3://); wins over segment.checkpoint.
        output: the results folder; wins over segment.output.

    Returns summary.json's content but its per-second entries, the ``paths`` of the results and
    ``message`` (what was found, also the flow's last log line).
    """
    log = get_run_logger()
    cfg = compose(overrides or [])
    sg = cfg.segment
    storage = Storage(cfg.storage)
    video = video or sg.video
    checkpoint = checkpoint or sg.checkpoint
    if not video:
        raise ConfigError("no video to segment: give segment.video=<video file, local or s3://>")
    if not checkpoint:
        raise ConfigError("no checkpoint to segment with: give segment.checkpoint=<checkpoint folder, local or s3://>")
    video, checkpoint = absolute(video), absolute(checkpoint)
    out_dir = absolute(output or sg.output or segment_folder(absolute(cfg.output), checkpoint, video))
    result = segment_task(video, checkpoint, storage, out_dir, device=sg.device, expect_model=sg.model,
                          dataset=absolute(sg.dataset) if sg.dataset else None, window_s=sg.window_s,
                          model_size=sg.model_size, batch_size=sg.batch_size, overlay=sg.overlay,
                          overlay_max_side=sg.overlay_max_side, decode_deadline_s=sg.decode_deadline_s,
                          sam_checkpoint=sg.sam_checkpoint)
    for name, url in result["paths"].items():
        log.info("%s: %s", name, url)
    t = result["totals"]
    create_markdown_artifact(
        markdown=(f"## {posixpath.basename(video)}: {result['message']}\n\n"
                  f"{result['model']} (epoch {result['checkpoint_epoch']}), {result['setting']}, "
                  f"{t['seconds']} seconds in {result['windows']} windows of {result['window_s']} s, "
                  f"audio: {result['input']['audio']}\n\n"
                  f"| sounding seconds | mean area | mean area where sounding |\n|---|---|---|\n"
                  f"| {t['sounding_seconds']} of {t['seconds']} | {t['mean_area']:.1%} | "
                  f"{t['mean_area_sounding']:.1%} |\n\nResults: `{out_dir}`\n"),
        key="segment", description="what a checkpoint finds sounding in a video")
    log.info("%s", result["message"])  # the last line: what was found
    return {k: v for k, v in result.items() if k != "seconds"}  # per second: in summary.json


if __name__ == "__main__":
    main(segment)  # a video or checkpoint that cannot be used: its error at the end, exit status 1
