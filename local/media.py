"""Real video for the demo and the tests, made and read with the ffmpeg from the imageio-ffmpeg wheel."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import imageio_ffmpeg


def ffmpeg(*args: str) -> subprocess.CompletedProcess[bytes]:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", *args]
    return subprocess.run(command, capture_output=True, check=True, timeout=120)


def make_clip(path: Path, seconds: float = 8.0, size: str = "640x360", rate: int = 24) -> Path:
    """A moving test pattern with a tone: enough motion and colour for an edit to show."""
    path.parent.mkdir(parents=True, exist_ok=True)
    video_codec = (
        ["-c:v", "libvpx-vp9", "-b:v", "300k"] if path.suffix.lower() == ".webm" else ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    )
    audio_codec = ["-c:a", "libopus"] if path.suffix.lower() == ".webm" else ["-c:a", "aac"]
    ffmpeg(
        "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
        "-t", str(seconds),
        *video_codec, *audio_codec,
        "-shortest",
        str(path),
    )  # fmt: skip
    return path


def duration_seconds(path: Path) -> float:
    """The container's duration, read from ffmpeg's own report of the file."""
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, timeout=60, check=False)
    match = re.search(rb"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", result.stderr)
    if not match:
        raise ValueError(f"no duration in {path}")
    hours, minutes, seconds = (float(part) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def frame_rgb(path: Path, at_seconds: float = 1.0, size: tuple[int, int] = (64, 36)) -> bytes:
    """One frame, scaled down, as raw RGB bytes (for comparing input and output)."""
    result = ffmpeg("-ss", str(at_seconds), "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size[0]}x{size[1]}", "-")
    return result.stdout


def mean_abs_difference(first: bytes, second: bytes) -> float:
    """0 for identical frames, up to 255; a visible edit is well above 20."""
    if len(first) != len(second) or not first:
        raise ValueError("frames differ in size")
    return sum(abs(a - b) for a, b in zip(first, second, strict=True)) / len(first)


def side_by_side(input_path: Path, output_path: Path, picture: Path, at_seconds: float = 1.0) -> Path:
    """A PNG with the input's frame on the left and the output's on the right."""
    picture.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg(
        "-y",
        "-ss", str(at_seconds), "-i", str(input_path),
        "-ss", str(at_seconds), "-i", str(output_path),
        "-filter_complex", "[0:v]scale=-2:360,setsar=1[a];[1:v]scale=-2:360,setsar=1[b];[a][b]hstack=inputs=2",
        "-frames:v", "1",
        str(picture),
    )  # fmt: skip
    return picture
