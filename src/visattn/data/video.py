"""Video files frame by frame, with PyAV (FFmpeg; the ``video`` extra): :class:`VideoReader` decodes
RGB frames lazily, :func:`write_video` encodes RGB frames into a new file atomically.

Containers and the codecs written into them (:data:`VIDEO_FORMATS`): ``.mp4``, ``.m4v``, ``.mov``,
``.mkv`` and ``.avi`` get H.264 (libx264), ``.webm`` gets VP9, both at constant quality (CRF 18).
Frames of even width and height are stored as YUV 4:2:0, which every player shows (colours are
kept at half resolution, so sharp colour edges blur by a pixel); odd sizes, which 4:2:0 cannot
hold, as YUV 4:4:4. Written videos have a constant frame rate and no audio.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from .._extras import require
from ..weights import atomic_write

__all__ = ["VIDEO_FORMATS", "VIDEO_EXTENSIONS", "is_video", "VideoReader", "write_video"]

# extension -> (FFmpeg muxer, encoder)
VIDEO_FORMATS = {".mp4": ("mp4", "libx264"), ".m4v": ("mp4", "libx264"), ".mov": ("mov", "libx264"),
                 ".mkv": ("matroska", "libx264"), ".avi": ("avi", "libx264"), ".webm": ("webm", "libvpx-vp9")}
VIDEO_EXTENSIONS = tuple(VIDEO_FORMATS)
QUALITY = {"libx264": {"crf": "18"}, "libvpx-vp9": {"crf": "18", "b:v": "0"}}  # b:v 0: constant quality in VP9


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_FORMATS


def _av():
    return require("av", extra="video")


class VideoReader:
    """The first video stream of ``path``: ``fps`` (a ``Fraction``), ``frames`` (the count the
    container states, ``None`` when it states none), ``size`` ``(W, H)``; iterating decodes the
    frames as ``(H, W, 3)`` uint8 RGB arrays. A file that is not a readable video is a
    ``ValueError`` naming it. Use as a context manager (or call :meth:`close`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        av = _av()
        self.path = Path(path)
        try:
            self._container = av.open(str(path))
        except (av.FFmpegError, OSError) as err:
            raise ValueError(f"cannot read video {path}: {err}") from err
        if not self._container.streams.video:
            self._container.close()
            raise ValueError(f"cannot read video {path}: no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # FFmpeg decodes on several threads
        self.fps = Fraction(self._stream.average_rate or self._stream.guessed_rate or 0)
        if self.fps <= 0:
            self._container.close()
            raise ValueError(f"cannot read video {path}: no frame rate")
        self.frames = self._stream.frames or None
        self.size = (self._stream.width, self._stream.height)

    def __iter__(self) -> Iterator[np.ndarray]:
        av = _av()
        try:
            for frame in self._container.decode(self._stream):
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as err:
            raise ValueError(f"cannot read video {self.path}: {err}") from err

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: Fraction | float) -> int:
    """Encode ``(H, W, 3)`` uint8 RGB ``frames`` (all of one size) at ``fps`` frames per second into
    ``path``, whose extension (a key of :data:`VIDEO_FORMATS`) picks the container and codec. The
    file appears only once it is complete (:func:`visattn.weights.atomic_write`). Returns the
    number of frames written."""
    av = _av()
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_FORMATS:
        raise ValueError(f"cannot write video {path}: extension {suffix!r} is none of {', '.join(VIDEO_FORMATS)}")
    muxer, codec = VIDEO_FORMATS[suffix]
    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        with av.open(tmp, "w", format=muxer) as container:
            stream = None
            for rgb in frames:
                if stream is None:
                    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1_000_000))
                    stream.height, stream.width = rgb.shape[:2]
                    stream.pix_fmt = "yuv420p" if stream.width % 2 == 0 and stream.height % 2 == 0 else "yuv444p"
                    stream.options = QUALITY[codec]
                elif rgb.shape[:2] != (stream.height, stream.width):
                    raise ValueError(f"cannot write video {path}: frame {count} is {rgb.shape[1]}x{rgb.shape[0]}, "
                                     f"the first {stream.width}x{stream.height}")
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
                count += 1
            if stream is None:
                raise ValueError(f"cannot write video {path}: no frames")
            container.mux(stream.encode())

    try:
        atomic_write(path, write)
    except av.FFmpegError as err:
        raise ValueError(f"cannot write video {path}: {err}") from err
    return count
