"""Fetching the input video and "generating" the result with ffmpeg.

The edit stands in for Aleph: it keeps only the first 5 seconds (the documented output cap) and
applies a visible, deterministic filter (colour negation plus a hue shift) so tests and the demo
can tell an output frame from an input frame. Shared by every provider protocol.
"""

from __future__ import annotations

import re
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

# The container the ``wrong_container`` fault writes instead of the one a result's suffix names.
WRONG_CONTAINER = {".webm": ".mp4", ".mov": ".mp4", ".mp4": ".webm"}

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


def _codec(video_out: Path, quality: int | None) -> list[str]:
    """Encoder options by the output's container; ``quality`` (20-99, higher is better) sets the CRF."""
    suffix = video_out.suffix.lower()
    if suffix == ".webm":
        crf = 33 if quality is None else round(63 - 0.4 * quality)
        return ["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", str(crf), "-deadline", "realtime", "-cpu-used", "8", "-threads", "2"]
    crf = 23 if quality is None else round(51 - 0.33 * quality)
    x264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-threads", "2", "-pix_fmt", "yuv420p"]
    return [*x264, "-movflags", "+faststart"] if suffix in (".mp4", ".m4v", ".mov") else x264


def edit_video(
    src: Path,
    video_out: Path,
    cover_out: Path | None,
    *,
    aspect_ratio: str | None = None,
    max_seconds: float | None = OUTPUT_SECONDS,
    size: tuple[int, int] | None = None,
    variant: int = 0,
    quality: int | None = None,
    wrong_container: bool = False,
) -> None:
    """Write the edited video (video only; container by ``video_out``'s suffix) and a PNG of its
    first frame. ``variant`` shifts the hue further, so several results of one task differ;
    ``size`` scales and centre-crops to exactly that many pixels. ``wrong_container`` (the fault
    of that name) writes another container than the suffix names (``WRONG_CONTAINER``) under
    the same name, as a provider that ignores the format asked for would."""
    encoded = video_out.with_name(f"{video_out.stem}.wrong{WRONG_CONTAINER[video_out.suffix.lower()]}") if wrong_container else video_out
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    scale = (
        [f"scale={size[0]}:{size[1]}:force_original_aspect_ratio=increase", f"crop={size[0]}:{size[1]}", "setsar=1"]
        if size
        else [f"scale=w='trunc(min(iw,{MAX_OUTPUT_WIDTH})/2)*2':h=-2"]
    )
    filters = [
        *_aspect_crop(aspect_ratio),
        "negate",
        f"hue=h={90 + 60 * variant}:s=1.3",
        *scale,
        "format=yuv420p",
    ]
    base = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    edit = [
        *base,
        "-i", str(src),
        *(["-t", str(max_seconds)] if max_seconds else []),
        "-map", "0:v:0",
        "-vf", ",".join(filters),
        "-an",
        *_codec(encoded, quality),
        str(encoded),
    ]  # fmt: skip
    _ffmpeg(edit)
    if encoded != video_out:
        encoded.replace(video_out)
    if cover_out is not None:
        _ffmpeg([*base, "-i", str(video_out), "-frames:v", "1", "-update", "1", str(cover_out)])


def _ffmpeg(command: list[str]) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=FFMPEG_TIMEOUT_SECONDS)
    except subprocess.CalledProcessError as exc:
        raise EditFailure(400, MSG_BAD_VIDEO) from exc
    except subprocess.TimeoutExpired as exc:
        raise EditFailure(500, MSG_SERVER_ERROR) from exc


def probe_seconds(path: Path) -> float | None:
    """The input's duration as ffmpeg reads it (None when it cannot tell)."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    result = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, timeout=60, check=False)
    match = re.search(rb"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", result.stderr)
    if not match:
        return None
    hours, minutes, seconds = (float(part) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds
