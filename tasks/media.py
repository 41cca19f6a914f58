"""Image files as bytes: the one PNG and JPEG encoder the SynthAVS writers and the shard
writer share. Both are byte-deterministic for the same array and arguments."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray, compress_level: int = 3) -> bytes:
    """PNG of uint8 [H, W] (grayscale 'L') or [H, W, 3] (RGB). zlib level 3: on our frames
    both faster and smaller than PIL's default 6, and far smaller than level 1."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def jpeg_bytes(image: np.ndarray, quality: int, subsampling: str | None = None) -> bytes:
    """JPEG of uint8 [H, W, 3]. subsampling None is PIL's default (4:2:0, as ordinary JPEG
    files such as AVSBench's frames have it); "4:4:4" keeps thin boundaries' colour."""
    buf = io.BytesIO()
    kwargs = {} if subsampling is None else {"subsampling": subsampling}
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=quality, **kwargs)
    return buf.getvalue()


def voc_palette(num_classes: int) -> np.ndarray:
    """uint8 [num_classes, 3]: the PASCAL-VOC-style colour of each class id, the colours of
    AVSS's labels_rgb (id bits spread over R, G, B from the top bit down)."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for c in range(num_classes):
        value, shift = c, 7
        while value:
            for channel in range(3):
                palette[c, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return palette
