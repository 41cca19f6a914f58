"""Step *segment*: a new video of any length -> per-second masks, a summary and an overlay video.

- :mod:`tasks.segment.recipe`: how the checkpoint's training data was preprocessed (frame size,
  T, log-mel framing, Maskige source, frame encoding), read from the data set's manifest;
- :mod:`tasks.segment.reader`: windows of T seconds of a video file in one streaming pass,
  frame by frame and sample by sample as :mod:`tasks.decode.video` reads a clip;
- :mod:`tasks.segment.overlay`: the overlay mp4 (H.264 + AAC of the original audio);
- :mod:`tasks.segment.run`: :func:`~tasks.segment.run.segment_video`, the step itself.
"""
