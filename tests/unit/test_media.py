"""Video durations from container headers, on real files written by ffmpeg."""

from __future__ import annotations

from pathlib import Path

import pytest

from aleph_pipeline.media import MAX_READS, WINDOW, DurationUnknown, duration_seconds
from local.media import ffmpeg


class Reader:
    """Ranged reads of a file, recorded so a test can bound what was read."""

    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        return self.data[offset : offset + length]

    @property
    def bytes_read(self) -> int:
        return sum(min(length, len(self.data) - offset) for offset, length in self.calls)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    source = ["-f", "lavfi", "-i", "testsrc2=size=320x180:rate=24", "-t", "3.5"]
    h264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    made = {
        "moov-at-end.mp4": [*source, *h264],
        "faststart.mp4": [*source, *h264, "-movflags", "+faststart"],
        "clip.mov": [*source, *h264],
        "clip.m4v": [*source, *h264, "-f", "mp4"],
        "fragmented.mp4": [*source, *h264, "-movflags", "frag_keyframe"],
        "live.mp4": [*source, *h264, "-movflags", "frag_keyframe+empty_moov"],
        "clip.webm": [*source, "-c:v", "libvpx-vp9", "-b:v", "200k", "-deadline", "realtime"],
        "clip.avi": [*source, "-c:v", "mpeg4"],
        # 12 s with audio: media data large enough that a moov at the end is beyond the first read.
        "long.mp4": ["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine", "-t", "12", *h264, "-c:a", "aac"],
    }
    paths = {}
    for name, args in made.items():
        path = folder / name
        ffmpeg("-y", *args, str(path))
        paths[name] = path
    return paths


@pytest.mark.parametrize("name", ["moov-at-end.mp4", "faststart.mp4", "clip.mov", "clip.m4v", "fragmented.mp4", "clip.webm", "clip.avi"])
def test_duration_of_each_container(videos: dict[str, Path], name: str) -> None:
    reader = Reader(videos[name])
    assert duration_seconds(name.rsplit(".", 1)[1], len(reader.data), reader) == pytest.approx(3.5, abs=0.05)
    assert len(reader.calls) <= 2


def test_a_moov_at_the_end_costs_one_more_read_of_the_tail_only(videos: dict[str, Path]) -> None:
    reader = Reader(videos["long.mp4"])
    size = len(reader.data)
    assert size > 4 * WINDOW  # the media data really is bigger than one read
    assert duration_seconds("mp4", size, reader) == pytest.approx(12.0, abs=0.05)
    assert len(reader.calls) == 2
    assert reader.calls[0] == (0, WINDOW)
    assert reader.calls[1][0] > size - WINDOW  # straight to the moov box at the end
    assert reader.bytes_read < 2 * WINDOW


def test_a_faststart_file_needs_one_read(videos: dict[str, Path]) -> None:
    reader = Reader(videos["faststart.mp4"])
    duration_seconds("mp4", len(reader.data), reader)
    assert len(reader.calls) == 1


def test_a_fragmented_mp4_without_a_total_duration_is_refused(videos: dict[str, Path]) -> None:
    reader = Reader(videos["live.mp4"])
    with pytest.raises(DurationUnknown, match="fragmented"):
        duration_seconds("mp4", len(reader.data), reader)


@pytest.mark.parametrize(
    ("extension", "content"),
    [
        ("mp4", b"not a video at all, just some text" * 10),
        ("webm", b"\x00\x01\x02" * 50),
        ("avi", b"RIFF\x00\x00\x00\x00WAVE" + b"\x00" * 40),
        ("mkv", b"whatever"),
    ],
)
def test_something_else_than_the_container_is_refused(extension: str, content: bytes) -> None:
    with pytest.raises(DurationUnknown):
        duration_seconds(extension, len(content), lambda offset, length: content[offset : offset + length])


def test_a_truncated_file_is_refused(videos: dict[str, Path]) -> None:
    data = videos["moov-at-end.mp4"].read_bytes()[:-500]  # the moov box is cut off
    with pytest.raises(DurationUnknown):
        duration_seconds("mp4", len(data), lambda offset, length: data[offset : offset + length])


def test_reads_are_bounded_whatever_the_file() -> None:
    # A file of many empty `free` boxes and no moov: walking it must stop after MAX_READS reads.
    box = (8).to_bytes(4, "big") + b"free"
    data = (b"\x00\x00\x00\x10ftypisom\x00\x00\x02\x00" + box * 200_000)[:2_000_000]
    calls: list[int] = []

    def read(offset: int, length: int) -> bytes:
        calls.append(offset)
        return data[offset : offset + length]

    with pytest.raises(DurationUnknown):
        duration_seconds("mp4", len(data), read)
    assert len(calls) <= MAX_READS
