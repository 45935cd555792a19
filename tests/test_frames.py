"""Frames of videos and animated images (``frames.py``, issue 22)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import frames


def _clip(count: int, height: int = 24, width: int = 32) -> list[np.ndarray]:
    """Frames whose brightness encodes their index (survives lossy video coding)."""
    return [np.full((height, width, 3), 20 + 40 * i, np.uint8) for i in range(count)]


def write_gif(path, images: list[np.ndarray]) -> None:
    first, *rest = [Image.fromarray(i) for i in images]
    first.save(path, save_all=True, append_images=rest, duration=40, loop=0)


def write_video(path, images: list[np.ndarray], fps: int = 10) -> None:
    import av

    with av.open(str(path), 'w') as container:
        stream = container.add_stream('mpeg4', rate=fps)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = 'yuv420p'
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format='rgb24')))
        container.mux(stream.encode())


@pytest.mark.parametrize(
    'spec, expected',
    [('all', (0, None)), ('3', (0, 3)), ('2:5', (2, 5)), (':4', (0, 4)), ('7:', (7, None))],
)
def test_parse_frames(spec, expected):
    parsed = frames.parse_frames(spec)
    assert (parsed.start, parsed.stop) == expected


@pytest.mark.parametrize('spec', ['0', '-1', '5:5', '4:2', 'x', '1:2:3', '-2:'])
def test_parse_frames_refuses_naming_the_option(spec):
    with pytest.raises(frames.FrameError, match=r'sr\.frames'):
        frames.parse_frames(spec)


@pytest.mark.parametrize('kind', ['gif', 'mp4'])
def test_frames_are_read_in_order_and_by_index(tmp_path, kind):
    images = _clip(6)
    path = tmp_path / f'clip.{kind}'
    (write_gif if kind == 'gif' else write_video)(path, images)
    assert frames.has_frames(path)
    read = list(frames.read_frames(path, frames.parse_frames('1:4')))
    assert [i for i, _ in read] == [1, 2, 3]
    for index, image in read:
        assert image.shape == images[0].shape and image.dtype == np.uint8
        assert abs(float(image.mean()) - images[index].mean()) < 4, index
    reader = frames.FrameReader(path)
    for index in (2, 4, 1):  # 1 after 4: decoding starts again.
        assert abs(float(reader.frame(index).mean()) - images[index].mean()) < 4, index
    with pytest.raises(frames.FrameError, match='no frame 9'):
        reader.frame(9)


def test_a_still_image_has_no_frames_and_a_broken_video_is_named(tmp_path):
    Image.fromarray(_clip(1)[0]).save(tmp_path / 'still.png')
    write_gif(tmp_path / 'one.gif', _clip(1))
    assert not frames.has_frames(tmp_path / 'still.png')
    assert not frames.has_frames(tmp_path / 'one.gif')  # One frame: a photo.
    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(b'not a video at all')
    with pytest.raises(frames.FrameError, match='broken.mp4'):
        list(frames.read_frames(broken, frames.ALL_FRAMES))
