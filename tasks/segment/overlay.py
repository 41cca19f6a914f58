"""The overlay video: the sampled frames (one per second, each shown for its second) with the
predicted sounding pixels highlighted, and the input's own audio track.

H.264 (libx264, yuv420p) + AAC in mp4, written the way :func:`tasks.synthavs.writers.write_mp4`
writes SynthAVS videos so that the same input gives the same bytes on one machine: x264 on one
thread with macroblock-tree rate control off, and the muxer's ``+bitexact``. The audio is the
input's first audio track, decoded and re-encoded to AAC at its own sample rate (or 48 kHz where
AAC has no such rate) in mono or stereo (more channels are mixed down to stereo by FFmpeg), on
the same time line as the frames, cut where the last shown second ends; a video without audio
gives an overlay without audio.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from PIL import Image

BINARY_COLOUR = (255, 48, 48)  # as the evaluation's overlays
ALPHA = 0.55
CRF = 20
AAC_FRAME = 1024


def palette(semantic: bool) -> np.ndarray:
    """uint8 [256, 3]: the colour of each label (AVSS: AVSBench's VOC palette; binary: red)."""
    from tasks.media import voc_palette

    colours = voc_palette(256).copy()
    if not semantic:
        colours[1] = BINARY_COLOUR
    return colours


def highlight(frame: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """frame uint8 [h, w, 3] with labels (uint8 [H, W], 0 = nothing) tinted in and outlined;
    labels are resized to the frame (nearest) when their size differs (both cover the whole image)."""
    h, w = frame.shape[:2]
    if labels.shape != (h, w):
        labels = np.asarray(Image.fromarray(labels).resize((w, h), Image.NEAREST))
    on = labels != 0
    out = frame.astype(np.float32)
    colour = colours[labels].astype(np.float32)
    out[on] = (1 - ALPHA) * out[on] + ALPHA * colour[on]
    inner = on.copy()  # outline: labelled pixels with a 4-neighbour of another label
    inner[1:] &= labels[1:] == labels[:-1]
    inner[:-1] &= labels[:-1] == labels[1:]
    inner[:, 1:] &= labels[:, 1:] == labels[:, :-1]
    inner[:, :-1] &= labels[:, :-1] == labels[:, 1:]
    edge = on & ~inner
    out[edge] = colour[edge]
    return out.round().clip(0, 255).astype(np.uint8)


class OverlayWriter:
    """Writes overlay.mp4 at a local path: frames at 1 fps, and the audio (float32 [channels, n]
    at audio_rate) as it comes, window after window."""

    def __init__(self, path: str, width: int, height: int, audio_rate: int | None = None, audio_channels: int = 1):
        import av

        if width % 2 or height % 2:
            raise ValueError(f"H.264 yuv420p needs an even frame size, got {width}x{height}")
        self.path = path
        self.width, self.height = width, height
        self.container = av.open(path, mode="w", format="mp4", options={"fflags": "+bitexact"})
        self.video = self.container.add_stream("libx264", rate=1)
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.video.codec_context.thread_count = 1  # x264 with several threads is not bit-reproducible
        self.video.options = {"crf": str(CRF), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        self.audio = None
        self.frames = 0
        self.samples = 0
        self._pending = np.zeros((audio_channels, 0), np.float32)
        if audio_rate:
            self.audio = self.container.add_stream("aac", rate=audio_rate)
            self.audio.layout = "mono" if audio_channels == 1 else "stereo"
            self.audio_rate = audio_rate

    def add_frame(self, image: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts, frame.time_base = self.frames, Fraction(1, 1)
        for packet in self.video.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def add_audio(self, samples: np.ndarray) -> None:
        if self.audio is None:
            return
        self._pending = np.concatenate([self._pending, np.asarray(samples, np.float32)], axis=1)
        whole = self._pending.shape[1] // AAC_FRAME * AAC_FRAME
        self._encode(self._pending[:, :whole])
        self._pending = self._pending[:, whole:]

    def _encode(self, samples: np.ndarray) -> None:
        import av

        layout = "mono" if samples.shape[0] == 1 else "stereo"
        for start in range(0, samples.shape[1], AAC_FRAME):
            chunk = np.ascontiguousarray(np.clip(samples[:, start : start + AAC_FRAME], -1.0, 1.0))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = self.audio_rate
            frame.pts = self.samples
            self.samples += chunk.shape[1]
            for packet in self.audio.encode(frame):
                self.container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self.video.encode():
                self.container.mux(packet)
            if self.audio is not None:
                if self._pending.shape[1]:
                    self._encode(self._pending)
                for packet in self.audio.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
