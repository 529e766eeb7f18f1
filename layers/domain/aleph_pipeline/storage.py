"""S3: reading inputs, presigned URLs, the output files, and a streaming copy from a URL."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from io import BufferedReader, RawIOBase
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from .errors import STAGE_FINALIZE, JobError, TransientError

if TYPE_CHECKING:
    import httpx

MIB = 1024 * 1024
MAX_REDIRECTS = 5
# Measured with bench/finalize.py (see the README's Performance section). Parts of 5 MiB (S3's
# smallest; up to 50 GB in 10,000 parts), two uploading and two read ahead: memory stays near
# six parts whatever the result's size, and throughput is the same as with 8 MiB parts. A result
# of at most 12 MiB (a typical 5-second edit) goes up in one PUT instead of four requests.
COPY_PART_BYTES = 5 * MIB
COPY_CONCURRENCY = 2
COPY_READ_AHEAD_PARTS = 2
COPY_SINGLE_PUT_BYTES = 12 * MIB


@lru_cache(maxsize=1)
def s3_client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(signature_version="s3v4", retries={"mode": "standard", "max_attempts": 5}))


@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str
    last_modified: datetime
    version_id: str | None

    @property
    def version_marker(self) -> str:
        """What tells two uploads of the same key apart."""
        if self.version_id and self.version_id != "null":
            return self.version_id
        return f"{self.etag}@{self.last_modified.isoformat()}"


def head(bucket: str, key: str) -> ObjectInfo | None:
    try:
        answer = s3_client().head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _status(exc) in (403, 404):
            return None
        raise
    return ObjectInfo(bucket, key, int(answer["ContentLength"]), answer["ETag"].strip('"'), answer["LastModified"], answer.get("VersionId"))


def read_bytes(info: ObjectInfo, limit: int) -> bytes | None:
    """Read the exact object version ``info`` describes (None if it changed or vanished since)."""
    if info.size == 0:
        return b""  # S3 answers a ranged GET of an empty object with 416, not with no bytes
    try:
        answer = s3_client().get_object(Bucket=info.bucket, Key=info.key, IfMatch=f'"{info.etag}"', Range=f"bytes=0-{limit}")
    except Exception as exc:
        if _status(exc) in (404, 412):
            return None
        raise
    body: bytes = answer["Body"].read()
    return body


def read_range(info: ObjectInfo, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of the exact object version ``info`` describes (a ranged GET)."""
    try:
        answer = s3_client().get_object(Bucket=info.bucket, Key=info.key, IfMatch=f'"{info.etag}"', Range=f"bytes={offset}-{offset + length - 1}")
    except Exception as exc:
        if _status(exc) in (404, 412):
            # Replaced or deleted since it was found: a redelivery finds the new one.
            raise TransientError(f"the video {info.key} changed while its header was read") from exc
        raise
    body: bytes = answer["Body"].read()
    return body


def list_siblings(bucket: str, stem: str) -> list[str]:
    """Keys that start with ``<stem>.`` (a sidecar's possible videos)."""
    return list_keys(bucket, f"{stem}.")


def list_keys(bucket: str, prefix: str) -> list[str]:
    """Every key under ``prefix``."""
    keys: list[str] = []
    for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(entry["Key"] for entry in page.get("Contents", ()))
    return keys


def delete_keys(bucket: str, keys: list[str]) -> None:
    """Delete up to a thousand keys in one request (a job has a handful)."""
    answer = s3_client().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in keys[:1000]], "Quiet": True})
    if answer.get("Errors"):
        raise RuntimeError(f"S3 could not delete {len(answer['Errors'])} of {len(keys)} outputs: {answer['Errors'][0].get('Code')}")


def presign_get(bucket: str, key: str, ttl_seconds: int) -> str:
    url: str = s3_client().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl_seconds)
    return url


def put_json(bucket: str, key: str, document: dict[str, Any]) -> int:
    body = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")
    s3_client().put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    return len(body)


# Longer result URLs are refused: a job item (DynamoDB, 400 KB) holds up to four of them.
MAX_RESULT_URL_CHARS = 8192
# How much of a refused URL an error message echoes.
MAX_ECHOED_URL_CHARS = 200
HOST_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*", re.ASCII)


def check_url(url: str, allowed_hosts: tuple[str, ...], allow_http: bool) -> None:
    """Refuse any URL that is not https on one of ``allowed_hosts`` (or a subdomain of one).

    Raises nothing but ``JobError`` (``result_rejected``), whatever the text.
    """
    scheme, host = _url_scheme_and_host(url)
    scheme_ok = scheme == "https" or (allow_http and scheme == "http")
    if not scheme_ok or not host:
        raise _refused(f"result URL scheme or form not allowed: {_redact(url)}")
    if _is_ip(host) and host not in allowed_hosts:
        raise _refused(f"result URL host {host} is an address, not an allowed host")
    if not _is_ip(host) and not HOST_PATTERN.fullmatch(host):
        raise _refused(f"result URL host is not a plain ASCII host name: {_redact(url)}")
    if not any(host == allowed or host.endswith("." + allowed) for allowed in allowed_hosts):
        raise _refused(
            f"result URL host {host} is not one of the provider's hosts ({', '.join(allowed_hosts)}); a stack can allow more with the RESULT_HOSTS setting"
        )


def _url_scheme_and_host(url: str) -> tuple[str, str]:
    """The scheme and lower-case host of a URL, read the way both urlsplit and httpx (the client
    that fetches it) read it; a URL they cannot read, read differently, or that carries
    credentials is refused (a JobError, never ValueError or UnicodeError)."""
    import httpx  # here, not at the top: the status function reads S3 and never a URL

    if not isinstance(url, str) or len(url) > MAX_RESULT_URL_CHARS:
        raise _refused(f"result URL is not a text of at most {MAX_RESULT_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it checks it (a port out of range or not a number raises)
        fetched = httpx.URL(url)
        fetched_host = fetched.raw_host.decode("ascii").lower().rstrip(".")
    except (ValueError, UnicodeError, httpx.InvalidURL) as exc:
        raise _refused(f"result URL cannot be read ({type(exc).__name__}): {_redact(url)}") from exc
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.username is not None or parts.password is not None or fetched.userinfo:
        raise _refused(f"result URL carries credentials: {_redact(url)}")
    if host != fetched_host or parts.scheme != fetched.scheme:
        # e.g. fullwidth dots, which httpx maps to ASCII ones: what is checked must be what is fetched.
        raise _refused(f"result URL host is not a plain ASCII host name: {_redact(url)}")
    return parts.scheme, host


def _refused(message: str) -> JobError:
    return JobError("result_rejected", message, STAGE_FINALIZE)


def copy_url_to_s3(
    http: httpx.Client,
    url: str,
    bucket: str,
    key: str,
    *,
    allowed_hosts: tuple[str, ...],
    allow_http: bool,
    max_bytes: int,
    max_seconds: float | None = None,
    content_type: str | None = None,
) -> int:
    """Stream a URL into S3 with a managed multipart upload; memory does not grow with size.

    Every redirect hop is checked like the first URL. A failed copy leaves no object: the
    multipart upload is aborted, and an object appears only when the upload completes.
    """
    import httpx
    from boto3.s3.transfer import TransferConfig

    for _hop in range(MAX_REDIRECTS + 1):
        check_url(url, allowed_hosts, allow_http)
        try:
            with http.stream("GET", url) as response:
                if response.is_redirect and "location" in response.headers:
                    try:
                        url = urljoin(url, response.headers["location"])
                    except ValueError as exc:  # a Location no parser can read: refused like a foreign host
                        raise JobError("result_rejected", f"the result redirected to an unreadable URL ({_redact(url)})", STAGE_FINALIZE) from exc
                    continue
                if response.status_code in (404, 410, 403):
                    raise JobError(
                        "result_unavailable",
                        f"the result answered HTTP {response.status_code}: it is gone or expired",
                        STAGE_FINALIZE,
                        details={"httpStatus": response.status_code},  # a provider may offer a fresh link for it
                    )
                if response.status_code != 200:
                    raise TransientError(f"result download answered HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise JobError("result_unavailable", f"the result is {declared} bytes, over the {max_bytes}-byte limit", STAGE_FINALIZE)
                capped = _CappedStream(response.iter_bytes(chunk_size=MIB), max_bytes, max_seconds)
                # Buffered, so each read returns a full part (S3 refuses parts under 5 MiB).
                reader = BufferedReader(capped, buffer_size=MIB)
                extra = {"ContentType": content_type or response.headers.get("content-type", "application/octet-stream")}
                config = TransferConfig(
                    multipart_threshold=COPY_SINGLE_PUT_BYTES,
                    multipart_chunksize=COPY_PART_BYTES,
                    max_concurrency=COPY_CONCURRENCY,
                )
                # Parts read ahead of the upload are what would grow memory: keep just enough
                # to keep both upload threads busy.
                config.max_in_memory_upload_chunks = COPY_READ_AHEAD_PARTS
                s3_client().upload_fileobj(reader, bucket, key, ExtraArgs=extra, Config=config)
                return capped.total
        except httpx.TransportError as exc:
            raise TransientError(f"result download failed: {type(exc).__name__}") from exc
    raise JobError("result_unavailable", f"the result URL redirected more than {MAX_REDIRECTS} times", STAGE_FINALIZE)


class _CappedStream(RawIOBase):
    """A file-like view of an iterator of byte chunks that refuses to exceed ``limit`` bytes."""

    def __init__(self, chunks: Iterator[bytes], limit: int, max_seconds: float | None = None) -> None:
        self._chunks = chunks
        self._pending = b""
        self._limit = limit
        self._deadline = time.monotonic() + max_seconds if max_seconds else None
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
            self.total += len(self._pending)
            if self._deadline is not None and time.monotonic() > self._deadline:
                # A trickling download must not hold the function until it times out.
                raise TransientError("the result download took too long")
            if self.total > self._limit:
                raise JobError("result_unavailable", f"the result is over the {self._limit}-byte limit", STAGE_FINALIZE)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _redact(url: str) -> str:
    """A URL fit for an error message: without its query and fragment (where signatures and tokens
    live) and without any ``user:password@``, shortened, non-printable characters escaped. Plain
    string work: it must not fail on a URL no parser can read."""
    text = str(url).split("?", 1)[0].split("#", 1)[0]
    scheme, separator, rest = text.partition("://")
    if separator:
        authority, slash, path = rest.partition("/")
        text = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
    elif "@" in text:
        text = text.rpartition("@")[2]
    text = "".join(char if char.isprintable() else char.encode("unicode_escape", "backslashreplace").decode("ascii") for char in text)
    return JobError.shorten(text, MAX_ECHOED_URL_CHARS)


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status else None
    return None
