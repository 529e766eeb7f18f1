"""A result's container from its first bytes, on real files written by ffmpeg."""

from __future__ import annotations

from pathlib import Path

import pytest

from aleph_pipeline.errors import JobError
from aleph_pipeline.finalize import check_result_container
from aleph_pipeline.media import MAGIC_BYTES, container_of
from local.media import ffmpeg

SOURCE = ["-f", "lavfi", "-i", "testsrc2=size=64x36:rate=6", "-t", "0.5"]
H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("containers")
    made = {
        "clip.mp4": H264,
        "faststart.mp4": [*H264, "-movflags", "+faststart"],
        "clip.mov": H264,
        "clip.webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"],
        "clip.mkv": H264,
        "clip.avi": ["-c:v", "mpeg4"],
    }
    found = {}
    for name, codec in made.items():
        path: Path = folder / name
        ffmpeg("-y", *SOURCE, *codec, str(path))
        found[name] = path.read_bytes()[:MAGIC_BYTES]
    return found


@pytest.mark.parametrize(
    ("name", "container"),
    [("clip.mp4", "mp4"), ("faststart.mp4", "mp4"), ("clip.mov", "mov"), ("clip.webm", "webm"), ("clip.mkv", "webm"), ("clip.avi", "avi")],
)
def test_container_of_real_files(heads: dict[str, bytes], name: str, container: str) -> None:
    assert container_of(heads[name]) == container


@pytest.mark.parametrize("head", [b"", b"<html><body>", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d", b'{"code":500}'])
def test_anything_else_is_no_container(head: bytes) -> None:
    assert container_of(head) is None


def test_a_classic_quicktime_file_without_ftyp_is_mov() -> None:
    assert container_of(b"\x00\x00\x00\x08wide\x00\x00\x00\x00") == "mov"


@pytest.mark.parametrize(("extension", "name"), [("mp4", "clip.mp4"), ("mov", "clip.mov"), ("webm", "clip.webm")])
def test_the_container_asked_for_passes(heads: dict[str, bytes], extension: str, name: str) -> None:
    check_result_container(extension, heads[name], f"result.{extension}")


@pytest.mark.parametrize(
    ("extension", "name", "received", "shown"),
    [
        ("webm", "clip.mp4", "MP4", "MP4 where WebM/Matroska was asked for (result.webm)"),
        ("mov", "clip.mp4", "MP4", "MP4 where QuickTime (MOV) was asked for (result.mov)"),
        ("mp4", "clip.webm", "WEBM", "WebM/Matroska where MP4 was asked for (result.mp4)"),
        ("mp4", "clip.mov", "MOV", "QuickTime (MOV) where MP4 was asked for (result.mp4)"),
    ],
)
def test_another_container_is_a_result_format_mismatch(heads: dict[str, bytes], extension: str, name: str, received: str, shown: str) -> None:
    with pytest.raises(JobError) as caught:
        check_result_container(extension, heads[name], f"result.{extension}")
    error = caught.value
    assert (error.code, error.stage, error.retryable) == ("result_format_mismatch", "finalize", False)
    assert shown in error.message
    assert error.details["requestedFormat"] == extension.upper()
    assert error.details["receivedFormat"] == received
    assert error.hint


def test_an_empty_or_unknown_body_says_so() -> None:
    with pytest.raises(JobError, match="an empty file"):
        check_result_container("mp4", b"", "result.mp4")
    with pytest.raises(JobError, match="no video container we know"):
        check_result_container("mp4", b"<html>error", "result.mp4")
