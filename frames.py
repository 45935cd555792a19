"""Frames of videos and animated images, the input surveillance users have (``--mode sr``).

A video file (:data:`VIDEO_EXTENSIONS`, decoded by PyAV: FFmpeg's own decoders in a pinned
wheel, no system FFmpeg needed) or an animated image (GIF, WebP, APNG with more than one
frame, by Pillow) is read frame by frame; ``sr.frames`` picks which (:func:`parse_frames`).
Each selected frame is a photo of its own (``photos.py``), named ``<input>/frame<NNNNNN>``,
so its faces' noise keys hold the source name and the frame (``photos.face_key``).

Memory: frames are decoded once to find their faces and once more, in order, to paste the SR
faces back (:class:`FrameReader`), never held all at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

VIDEO_EXTENSIONS = frozenset(
    {'.mp4', '.m4v', '.mov', '.avi', '.mkv', '.webm', '.mpg', '.mpeg', '.wmv', '.flv', '.ts'}
)


class FrameError(ValueError):
    """A video or animated image that cannot be read, or a bad ``sr.frames``; names it."""


@dataclasses.dataclass(frozen=True)
class FrameRange:
    """Frames ``start <= i < stop`` (``stop`` None: to the end)."""

    start: int = 0
    stop: int | None = None

    def __contains__(self, index: int) -> bool:
        return index >= self.start and (self.stop is None or index < self.stop)

    def __str__(self) -> str:
        return f'{self.start}:{"" if self.stop is None else self.stop}'

    def done(self, index: int) -> bool:
        """Whether no frame from ``index`` on is wanted (decoding can stop)."""
        return self.stop is not None and index >= self.stop


ALL_FRAMES = FrameRange()


def parse_frames(spec: str) -> FrameRange:
    """``sr.frames``: ``'all'``, ``'N'`` (the first N) or ``'start:stop'`` (either may be empty;
    0-based, stop excluded, as Python slices)."""
    text = str(spec).strip()
    try:
        if text == 'all':
            return ALL_FRAMES
        if ':' not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return FrameRange(0, count)
        first, last = text.split(':')
        start = int(first) if first else 0
        stop = int(last) if last else None
        if start < 0 or (stop is not None and stop <= start):
            raise ValueError
        return FrameRange(start, stop)
    except ValueError:
        raise FrameError(
            f'sr.frames {spec!r}: give all, N (the first N >= 1) or start:stop (0 <= start < stop)'
        ) from None


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def is_animated(path: str | Path) -> bool:
    """An image file with more than one frame (GIF, WebP, APNG)."""
    try:
        with Image.open(path) as image:
            return getattr(image, 'n_frames', 1) > 1
    except (OSError, Image.DecompressionBombError):
        return False  # An image Pillow refuses: datasets.decode_image names it.


def has_frames(path: str | Path) -> bool:
    """Whether ``path`` is read frame by frame: a video or an animated image."""
    return is_video(path) or is_animated(path)


def list_videos(root: str | Path) -> list[Path]:
    """The video files under a folder (recursive, sorted), beside its images."""
    files = (p for p in Path(root).rglob('*') if p.is_file() and is_video(p))
    return sorted(files)


def read_frames(path: str | Path, frames: FrameRange) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, uint8 [H, W, 3])`` of the frames of ``path`` in ``frames``, in order."""
    source = _video_frames(path) if is_video(path) else _image_frames(path)
    for index, frame in enumerate(source):
        if frames.done(index):
            return
        if index in frames:
            yield index, frame()


def _video_frames(path: str | Path) -> Iterator:
    """Per decoded frame a function giving its RGB pixels (so skipped frames are not
    converted)."""
    import av  # Imported on use: photo runs without video need none of FFmpeg.

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise FrameError(f'{path}: no video stream')
            for frame in container.decode(video=0):
                yield lambda frame=frame: frame.to_ndarray(format='rgb24')
    except av.FFmpegError as err:
        raise FrameError(f'{path}: cannot decode the video ({err})') from None


def _image_frames(path: str | Path) -> Iterator:
    try:
        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                yield lambda frame=frame: np.asarray(frame.convert('RGB'))
    except OSError as err:
        raise FrameError(f'{path}: cannot decode the animated image ({err})') from None


class FrameReader:
    """Frames of one file by index, decoded sequentially (a request for an earlier frame
    than the last one starts decoding again): the paste-back asks in order."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._frames: Iterator[tuple[int, np.ndarray]] | None = None
        self._next = 0

    def frame(self, index: int) -> np.ndarray:
        if self._frames is None or index < self._next:
            self._frames = read_frames(self.path, FrameRange(index))
        for found, image in self._frames:
            self._next = found + 1
            if found == index:
                return image
        raise FrameError(f'{self.path}: no frame {index}')


#: Frame rate of an animated image without frame durations (GIF's common default).
DEFAULT_RATE = 10.0
#: H.264 quality of written videos (x264's constant rate factor: 18 is visually lossless).
VIDEO_CRF = 18


def frame_rate(path: str | Path) -> float:
    """Frames per second of a video (its stream's average rate) or an animated image (from
    its mean frame duration; :data:`DEFAULT_RATE` without one)."""
    if is_video(path):
        import av

        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
        return float(rate) if rate else DEFAULT_RATE
    with Image.open(path) as image:
        durations = [frame.info.get('duration', 0) for frame in ImageSequence.Iterator(image)]
    mean = float(np.mean(durations)) if durations else 0.0
    return 1000.0 / mean if mean > 0 else DEFAULT_RATE


def write_video(images: Iterator[np.ndarray], path: str | Path, rate: float) -> int:
    """Encodes uint8 ``[H, W, 3]`` frames, as they come, into an H.264 video (yuv420p, CRF
    :data:`VIDEO_CRF`, what every player opens) at ``rate`` frames per second; atomic (a
    temporary name, renamed when complete). yuv420p needs even sides: an odd last row or
    column is repeated. Returns the number of frames."""
    import fractions

    import av

    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp{path.suffix}')
    count = 0
    try:
        with av.open(str(tmp), 'w') as container:
            stream = container.add_stream(
                'libx264', rate=fractions.Fraction(rate).limit_denominator(1001),
                options={'crf': str(VIDEO_CRF)})  # fmt: skip
            stream.pix_fmt = 'yuv420p'
            for image in images:
                h, w = image.shape[:2]
                image = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode='edge')
                if count == 0:
                    stream.height, stream.width = image.shape[:2]
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format='rgb24')
                container.mux(stream.encode(frame))
                count += 1
            container.mux(stream.encode())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return count
