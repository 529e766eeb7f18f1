"""Fetching the input video and "generating" the result with ffmpeg.

The edit stands in for Aleph: it keeps only the first 5 seconds (the documented output cap) and
applies a visible, deterministic filter (colour negation plus a hue shift) so tests and the demo
can tell an output frame from an input frame. Shared by every provider protocol.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import imageio_ffmpeg

MAX_INPUT_BYTES = 10 * 1024 * 1024  # "Maximum file size: 10MB" (kie and apikley)
OUTPUT_SECONDS = 5  # "outputs are capped at 5 seconds"
FETCH_TIMEOUT_SECONDS = 60.0
FFMPEG_TIMEOUT_SECONDS = 300.0
MAX_OUTPUT_WIDTH = 1280  # keeps big inputs from making the edit slow

MSG_FETCH_FAILED = "Failed to fetch the video. Kindly verify any access limits set by you or your service provider."
MSG_TOO_LARGE = "The video file is too large: the maximum file size is 10MB."
MSG_BAD_VIDEO = "Incorrect video format: the input could not be decoded as a video."
MSG_SERVER_ERROR = "Server Error - An unexpected error occurred while processing the request"

# Proxies from the environment must not reroute requests to 127.0.0.1 (presigned moto URLs).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EditFailure(Exception):
    """A task failure with the provider code and message the client will see."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def fetch_input(url: str, dest: Path, *, max_bytes: int = MAX_INPUT_BYTES) -> int:
    """Plain GET of ``url`` (a presigned URL: sent untouched) into ``dest``; returns the size."""
    if urlsplit(url).scheme not in ("http", "https"):
        # urllib would happily open file:// URLs; a provider only fetches over HTTP(S).
        raise EditFailure(451, MSG_FETCH_FAILED)
    try:
        with _OPENER.open(urllib.request.Request(url, method="GET"), timeout=FETCH_TIMEOUT_SECONDS) as answer:
            length = answer.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise EditFailure(400, MSG_TOO_LARGE)
            size = 0
            with dest.open("wb") as out:
                while chunk := answer.read(256 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise EditFailure(400, MSG_TOO_LARGE)
                    out.write(chunk)
            return size
    except EditFailure:
        dest.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        dest.unlink(missing_ok=True)
        raise EditFailure(451, MSG_FETCH_FAILED) from exc


def _aspect_crop(aspect_ratio: str | None) -> list[str]:
    """A centre crop to the requested ratio, so ``aspectRatio`` has a visible effect too."""
    if not aspect_ratio:
        return []
    width, height = aspect_ratio.split(":")
    return [f"crop=w='min(iw,ih*{width}/{height})':h='min(ih,iw*{height}/{width})'"]


def edit_video(src: Path, video_out: Path, cover_out: Path, *, aspect_ratio: str | None = None) -> None:
    """Write the edited H.264 MP4 (video only) and a PNG of its first frame."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    filters = [
        *_aspect_crop(aspect_ratio),
        "negate",
        "hue=h=90:s=1.3",
        f"scale=w='trunc(min(iw,{MAX_OUTPUT_WIDTH})/2)*2':h=-2",
        "format=yuv420p",
    ]
    base = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    edit = [
        *base,
        "-i", str(src),
        "-t", str(OUTPUT_SECONDS),
        "-map", "0:v:0",
        "-vf", ",".join(filters),
        "-an",
        "-c:v", "libx264", "-preset", "veryfast", "-threads", "2",
        "-pix_fmt", "yuv420p",
        "-movflags", "+faststart",
        str(video_out),
    ]  # fmt: skip
    cover = [*base, "-i", str(video_out), "-frames:v", "1", "-update", "1", str(cover_out)]
    for command in (edit, cover):
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SECONDS)
        except subprocess.CalledProcessError as exc:
            raise EditFailure(400, MSG_BAD_VIDEO) from exc
        except subprocess.TimeoutExpired as exc:
            raise EditFailure(500, MSG_SERVER_ERROR) from exc
