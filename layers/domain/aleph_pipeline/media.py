"""A video's duration from its container header, read with a few ranged reads (never the whole file).

- MP4, MOV, M4V (ISO base media): the ``moov`` box's ``mvhd`` (timescale and duration). ``moov``
  may come before the media data (fast start) or after it: the top-level boxes are walked by
  their headers, so a file with ``moov`` at the end costs a second ranged read of its tail.
  A fragmented MP4 gives its duration in ``moov/mvex/mehd``.
- WEBM (Matroska/EBML): ``Segment/Info`` ``Duration`` times ``TimestampScale``.
- AVI (RIFF): ``hdrl/avih`` frame count times microseconds per frame (``odml/dmlh`` frame count
  when present, for files over 1 GB).

Reads are bounded: at most ``MAX_READS`` ranged reads of ``WINDOW`` bytes each.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

# (offset, length) -> the bytes there; fewer only at the end of the object.
ReadRange = Callable[[int, int], bytes]

WINDOW = 64 * 1024
MAX_READS = 6
MAX_BOXES = 10_000  # boxes/elements walked at most (a corrupt file must not loop for long)


class DurationUnknown(ValueError):
    """The header does not say how long the video is (or is not the container it claims)."""


class _Source:
    """Serves byte ranges from one cached window, fetching a new window when a range falls outside."""

    def __init__(self, read: ReadRange, size: int, window: int, max_reads: int) -> None:
        self._read = read
        self.size = size
        self._window = window
        self._max_reads = max_reads
        self.reads = 0
        self.bytes_read = 0
        self._start = 0
        self._data = b""

    def get(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer at the end of the file)."""
        if offset < 0 or offset >= self.size or length <= 0:
            return b""
        length = min(length, self.size - offset)
        end = offset + length
        if not (self._start <= offset and end <= self._start + len(self._data)):
            if length > self._window:
                raise DurationUnknown(f"a header part of {length} bytes is larger than the {self._window}-byte read window")
            if self.reads >= self._max_reads:
                raise DurationUnknown(f"no duration found within {self._max_reads} reads of the header")
            fetch = min(self._window, self.size - offset)
            self._data = self._read(offset, fetch)
            self._start = offset
            self.reads += 1
            self.bytes_read += len(self._data)
        return self._data[offset - self._start : offset - self._start + length]


def duration_seconds(extension: str, size: int, read: ReadRange, *, window: int = WINDOW, max_reads: int = MAX_READS) -> float:
    """The duration in seconds of a video of ``size`` bytes, by its extension's container.

    Raises ``DurationUnknown`` when the header does not give it.
    """
    source = _Source(read, size, window, max_reads)
    extension = extension.lower().lstrip(".")
    if extension in ("mp4", "mov", "m4v"):
        return _iso_bmff(source)
    if extension == "webm":
        return _matroska(source)
    if extension == "avi":
        return _avi(source)
    raise DurationUnknown(f"no header parser for .{extension} files")


# The first bytes of each container (its "magic"): ISO base media starts with a box header whose
# type is one of these; Matroska with the EBML id; AVI with a RIFF header of form type "AVI ".
ISO_FIRST_BOXES = (b"ftyp", b"moov", b"free", b"skip", b"wide", b"mdat", b"pnot")
MAGIC_BYTES = 12


def is_container(extension: str, head: bytes) -> bool:
    """Whether ``head`` (the file's first bytes) starts the container its extension names."""
    extension = extension.lower().lstrip(".")
    if extension in ("mp4", "mov", "m4v"):
        return len(head) >= 8 and head[4:8] in ISO_FIRST_BOXES
    if extension == "webm":
        return head[:4] == b"\x1a\x45\xdf\xa3"
    if extension == "avi":
        return head[:4] == b"RIFF" and head[8:12] == b"AVI "
    return False


# The container names ``container_of`` answers, with how an error message shows them.
CONTAINER_NAMES = {"mp4": "MP4", "mov": "QuickTime (MOV)", "webm": "WebM/Matroska", "avi": "AVI"}
QUICKTIME_BRAND = b"qt  "


def container_of(head: bytes) -> str | None:
    """Which container ``head`` (a file's first ``MAGIC_BYTES`` or more) starts: ``webm`` (EBML, so
    WebM or Matroska), ``mov`` (ISO base media whose ``ftyp`` major brand is QuickTime's ``qt  ``,
    or a classic QuickTime file without ``ftyp``), ``mp4`` (any other ``ftyp`` brand), ``avi``; None
    for anything else (an HTML error page, a PNG, ...)."""
    if is_container("webm", head):
        return "webm"
    if is_container("avi", head):
        return "avi"
    if is_container("mp4", head):
        if head[4:8] != b"ftyp":
            return "mov"
        return "mov" if head[8:12] == QUICKTIME_BRAND else "mp4"
    return None


def probe(extension: str, size: int, read: ReadRange) -> float | None:
    """Check a video's container before anything is spent: raises ``DurationUnknown`` when the file
    is not the container its extension names; answers the duration where the header gives one."""
    if not is_container(extension, read(0, min(size, MAGIC_BYTES)) if size else b""):
        raise DurationUnknown(f"the file does not start like a .{extension.lower().lstrip('.')} video (it may be another kind of file renamed)")
    try:
        return duration_seconds(extension, size, read)
    except DurationUnknown:
        return None


# ---- ISO base media (MP4/MOV) ------------------------------------------------------------------


def _box(source: _Source, offset: int, end: int) -> tuple[bytes, int, int]:
    """(type, header length, box size) of the box at ``offset`` inside a parent ending at ``end``."""
    head = source.get(offset, 16)
    if len(head) < 8:
        raise DurationUnknown(f"truncated box header at byte {offset}")
    size, kind = struct.unpack(">I4s", head[:8])
    header = 8
    if size == 1:
        if len(head) < 16:
            raise DurationUnknown(f"truncated 64-bit box size at byte {offset}")
        size = struct.unpack(">Q", head[8:16])[0]
        header = 16
    elif size == 0:  # the box runs to the end of its parent
        size = end - offset
    if size < header or offset + size > end:
        raise DurationUnknown(f"box `{kind.decode('latin-1')}` at byte {offset} has an impossible size {size}")
    return kind, header, size


def _find(source: _Source, kind_wanted: bytes, start: int, end: int) -> tuple[int, int] | None:
    """(body start, body end) of the first box of a kind among the boxes in [start, end)."""
    offset = start
    for _ in range(MAX_BOXES):
        if offset + 8 > end:
            return None
        kind, header, size = _box(source, offset, end)
        if kind == kind_wanted:
            return offset + header, offset + size
        offset += size
    raise DurationUnknown("too many boxes")


def _iso_bmff(source: _Source) -> float:
    first = source.get(0, 8)
    if len(first) < 8 or first[4:8] not in ISO_FIRST_BOXES:
        raise DurationUnknown("not an MP4/MOV file (no box structure at its start)")
    moov = _find(source, b"moov", 0, source.size)
    if moov is None:
        raise DurationUnknown("no `moov` box: the file is incomplete or not an MP4/MOV")
    mvhd = _find(source, b"mvhd", *moov)
    if mvhd is None:
        raise DurationUnknown("no `mvhd` box in `moov`")
    body = source.get(mvhd[0], 32)
    if len(body) < 20:
        raise DurationUnknown("truncated `mvhd` box")
    if body[0] == 1:
        if len(body) < 32:
            raise DurationUnknown("truncated `mvhd` box")
        timescale, duration = struct.unpack(">IQ", body[20:32])
        unknown = duration == 0xFFFFFFFFFFFFFFFF
    else:
        timescale, duration = struct.unpack(">II", body[12:20])
        unknown = duration == 0xFFFFFFFF
    if timescale == 0:
        raise DurationUnknown("`mvhd` has a zero timescale")
    if duration == 0 or unknown:
        # A fragmented MP4: the total is in moov/mvex/mehd, if the writer knew it.
        mvex = _find(source, b"mvex", *moov)
        mehd = _find(source, b"mehd", *mvex) if mvex else None
        if mehd is None:
            raise DurationUnknown("a fragmented MP4 whose header does not give its duration")
        body = source.get(mehd[0], 12)
        if len(body) < 8 or (body[0] == 1 and len(body) < 12):
            raise DurationUnknown("truncated `mehd` box")
        duration = struct.unpack(">Q", body[4:12])[0] if body[0] == 1 else struct.unpack(">I", body[4:8])[0]
    return float(duration) / float(timescale)


# ---- Matroska / WebM ---------------------------------------------------------------------------

_EBML = 0x1A45DFA3
_SEGMENT = 0x18538067
_INFO = 0x1549A966
_CLUSTER = 0x1F43B675
_TIMESTAMP_SCALE = 0x2AD7B1
_DURATION = 0x4489


def _vint(data: bytes, position: int, *, keep_marker: bool) -> tuple[int, int, bool]:
    """(value, length, all-ones) of the EBML variable-length integer at ``position``."""
    if position >= len(data):
        raise DurationUnknown("truncated EBML element")
    first = data[position]
    if first == 0:
        raise DurationUnknown("invalid EBML variable-length integer")
    length = 9 - first.bit_length()
    if position + length > len(data):
        raise DurationUnknown("truncated EBML element")
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for index in range(1, length):
        value = (value << 8) | data[position + index]
    all_ones = not keep_marker and value == (1 << (7 * length)) - 1
    return value, length, all_ones


def _element(source: _Source, offset: int) -> tuple[int, int, int | None]:
    """(id, header length, data size or None when unknown) of the element at ``offset``."""
    head = source.get(offset, 12)
    element_id, id_length, _ = _vint(head, 0, keep_marker=True)
    size, size_length, unknown = _vint(head, id_length, keep_marker=False)
    return element_id, id_length + size_length, None if unknown else size


def _matroska(source: _Source) -> float:
    element_id, header, size = _element(source, 0)
    if element_id != _EBML or size is None:
        raise DurationUnknown("not a WEBM/Matroska file (no EBML header)")
    offset = header + size
    element_id, header, segment_size = _element(source, offset)
    if element_id != _SEGMENT:
        raise DurationUnknown("no Segment after the EBML header")
    offset += header
    end = source.size if segment_size is None else min(source.size, offset + segment_size)
    for _ in range(MAX_BOXES):
        if offset >= end:
            break
        element_id, header, size = _element(source, offset)
        if element_id == _INFO:
            if size is None:
                raise DurationUnknown("the Info element has no size")
            return _matroska_info(source.get(offset + header, size))
        if element_id == _CLUSTER or size is None:
            break  # media data before any Info: the header has no duration to give
        offset += header + size
    raise DurationUnknown("no Segment Info with a Duration before the media data")


def _matroska_info(data: bytes) -> float:
    scale = 1_000_000  # nanoseconds per tick, the default
    duration: float | None = None
    position = 0
    while position < len(data):
        element_id, id_length, _ = _vint(data, position, keep_marker=True)
        size, size_length, _ = _vint(data, position + id_length, keep_marker=False)
        start = position + id_length + size_length
        body = data[start : start + size]
        if len(body) < size:
            raise DurationUnknown("truncated Info element")
        if element_id == _TIMESTAMP_SCALE and 1 <= size <= 8:
            scale = int.from_bytes(body, "big")
        elif element_id == _DURATION and size in (4, 8):
            duration = struct.unpack(">f" if size == 4 else ">d", body)[0]
        position = start + size
    if duration is None or scale == 0 or math.isnan(duration) or duration < 0:
        raise DurationUnknown("the Segment Info gives no Duration (a live or unfinished WEBM)")
    return duration * scale / 1e9


# ---- AVI (RIFF) --------------------------------------------------------------------------------


def _avi(source: _Source) -> float:
    head = source.get(0, 12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"AVI ":
        raise DurationUnknown("not an AVI file (no RIFF AVI header)")
    chunk = source.get(12, 12)
    if len(chunk) < 12 or chunk[:4] != b"LIST" or chunk[8:12] != b"hdrl":
        raise DurationUnknown("no `hdrl` list at the start of the AVI")
    hdrl_size = struct.unpack("<I", chunk[4:8])[0]
    offset, end = 24, min(source.size, 20 + hdrl_size)
    micro_per_frame: int | None = None
    frames: int | None = None
    odml_frames: int | None = None
    for _ in range(MAX_BOXES):
        if offset + 8 > end:
            break
        kind = source.get(offset, 12)
        size = struct.unpack("<I", kind[4:8])[0]
        if kind[:4] == b"avih":
            body = source.get(offset + 8, 20)
            if len(body) < 20:
                raise DurationUnknown("truncated `avih` header")
            micro_per_frame = struct.unpack("<I", body[0:4])[0]
            frames = struct.unpack("<I", body[16:20])[0]
        elif kind[:4] == b"LIST" and kind[8:12] == b"odml":
            dmlh = source.get(offset + 12, 12)
            if dmlh[:4] == b"dmlh" and len(dmlh) >= 12:
                odml_frames = struct.unpack("<I", dmlh[8:12])[0]
        offset += 8 + size + (size & 1)  # RIFF chunks are padded to an even size
    total = odml_frames or frames
    if not micro_per_frame or not total:
        raise DurationUnknown("the AVI header gives no frame count or frame duration")
    return total * micro_per_frame / 1e6
