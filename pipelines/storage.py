"""One filesystem layer for plain paths, file:// and s3:// URIs (pyarrow.fs underneath).

S3 speaks plain S3 so AWS, MinIO, Ceph or moto work unchanged. The endpoint comes from the caller, else from
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (pyarrow does not read those itself); credentials and region come from
the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION).
"""

from __future__ import annotations

import os
import posixpath
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs


class StorageError(RuntimeError):
    """A storage location is missing, unreachable or not writable. The message names it."""


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem and the path inside it (no scheme), plus the URI as the user gave it."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = self.uri.rstrip("/") + "/" + "/".join(parts)
        return Location(self.fs, path, uri)

    @property
    def is_s3(self) -> bool:
        return self.fs.type_name == "s3"


def s3_endpoint(endpoint: str | None = None) -> str | None:
    return endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def redact_uri(uri: str) -> str:
    """The URI without any `user:secret@` part: safe for logs, manifests, MLflow and error messages."""
    parsed = urlparse(uri)
    if parsed.scheme and "@" in parsed.netloc:
        return uri.replace(parsed.netloc, "***@" + parsed.netloc.rsplit("@", 1)[1], 1)
    return uri


def strip_credentials(uri: str) -> str:
    """The URI with any `user:secret@` part removed (not masked): still usable by another client (MLflow's
    boto3) with the environment's credentials."""
    parsed = urlparse(uri)
    if parsed.scheme and "@" in parsed.netloc:
        return uri.replace(parsed.netloc, parsed.netloc.rsplit("@", 1)[1], 1)
    return uri


def redact_uris(value):
    """`redact_uri` applied to every string inside nested dicts / lists (configs before they are recorded)."""
    match value:
        case str():
            return redact_uri(value)
        case dict():
            return {k: redact_uris(v) for k, v in value.items()}
        case list() | tuple():
            return type(value)(redact_uris(v) for v in value)
        case _:
            return value


def s3_filesystem(endpoint: str | None = None, key: str | None = None, secret: str | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem for the endpoint (or AWS when none), credentials from the standard environment."""
    endpoint = s3_endpoint(endpoint)
    kwargs: dict = {
        "region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
        # throttling / dropped connections are retried with backoff before an error surfaces
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=5),
        "connect_timeout": 10,  # seconds: a dead endpoint fails fast with a clear error instead of hanging
        "request_timeout": 60,
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = endpoint
        kwargs["scheme"] = parsed.scheme or "http"
    token = None  # keys given explicitly (from a URI) are long-term keys: the environment's token is not theirs
    if not (key and secret):
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        token = os.environ.get("AWS_SESSION_TOKEN")
    if key and secret:
        # explicit so the filesystem carries them when pickled to Ray workers on other nodes
        kwargs.update(access_key=key, secret_key=secret, session_token=token)
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, *, endpoint: str | None = None) -> Location:
    """Resolve a plain path, file:// URI or s3://bucket/prefix to a Location."""
    parsed = urlparse(uri)
    match parsed.scheme:
        case "s3":
            if not parsed.hostname:
                raise StorageError(f"{redact_uri(uri)}: an s3:// URI needs a bucket (s3://bucket/prefix)")
            # s3://KEY:SECRET@bucket/... (pyarrow's form) works, but the keys never reach the stored URI; a
            # redacted `s3://***@bucket/...` read back from a record uses the environment's keys
            bucket = parsed.netloc.rsplit("@", 1)[-1]
            path = (bucket + "/" + parsed.path.lstrip("/")).rstrip("/")
            key = secret = None
            if parsed.username and parsed.password:
                key, secret = unquote(parsed.username), unquote(parsed.password)
            fs = s3_filesystem(endpoint, key, secret)
            return Location(fs, path, redact_uri(uri).rstrip("/"))
        case "file":
            return Location(pafs.LocalFileSystem(), os.path.abspath(parsed.path), uri)
        case "":
            return Location(pafs.LocalFileSystem(), os.path.abspath(uri), os.path.abspath(uri))
        case other:
            raise StorageError(f"{uri}: unsupported scheme {other!r} (use a path, file:// or s3://)")


# Transient S3 failures worth another try. The AWS SDK inside pyarrow retries some of them itself, but not a
# 503 without an error body (HEAD requests) nor every dropped connection; Ray Data keeps a similar list.
TRANSIENT = ("HTTP status 503", "HTTP status 500", "SLOW_DOWN", "SlowDown", "SERVICE_UNAVAILABLE", "NETWORK_CONNECTION",
             "INTERNAL_FAILURE", "REQUEST_TIMEOUT", "Connection reset", "curlCode: 7", "curlCode: 28", "curlCode: 52",
             "curlCode: 56")  # fmt: skip
ATTEMPTS = 6  # with the backoff below: about 10 s of trying before an error surfaces
BACKOFF_S = 0.2  # first pause; doubles each attempt (with jitter), capped at 4 s


def retrying(action: Callable[[], object], is_s3: bool):
    """Run a storage call, retrying transient S3 errors with exponential backoff and jitter."""
    for attempt in range(ATTEMPTS):
        try:
            return action()
        except OSError as err:
            if not is_s3 or attempt == ATTEMPTS - 1 or not any(t in str(err) for t in TRANSIENT):
                raise
            time.sleep(min(4.0, BACKOFF_S * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _info(loc: Location) -> pafs.FileInfo:
    try:
        return retrying(lambda: loc.fs.get_file_info(loc.path), loc.is_s3)
    except OSError as err:  # unreachable endpoint, bad credentials, ...
        raise StorageError(f"{loc.uri}: cannot reach storage ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def exists(loc: Location) -> bool:
    return _info(loc).type != pafs.FileType.NotFound


def list_files(loc: Location) -> list[str]:
    """All files below a folder (recursive), as paths relative to it, sorted. Missing folder -> StorageError."""
    return sorted(file_stats(loc))


def file_stats(loc: Location) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime in ns)} for every file below a folder: what changed since a listing."""
    info = _info(loc)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{loc.uri}: not found")
    if info.type == pafs.FileType.File:
        raise StorageError(f"{loc.uri}: is a file, expected a folder")
    try:
        infos = retrying(lambda: loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True)), loc.is_s3)
    except OSError as err:
        raise StorageError(f"{loc.uri}: cannot list ({_first_line(err)})") from None
    prefix = loc.path.rstrip("/") + "/"
    return {
        i.path[len(prefix):]: (int(i.size or 0), int(i.mtime_ns or 0))
        for i in infos
        if i.type == pafs.FileType.File
    }


def read_bytes(loc: Location) -> bytes:
    def read() -> bytes:
        with loc.fs.open_input_stream(loc.path) as f:
            return f.read()

    try:
        return retrying(read, loc.is_s3)
    except FileNotFoundError:
        raise StorageError(f"{loc.uri}: not found") from None
    except OSError as err:
        raise StorageError(f"{loc.uri}: cannot read ({_first_line(err)})") from None


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a whole object atomically: readers see the old object or the new one, never a part.

    S3 PUTs are atomic by nature; on a local disk we write a temporary sibling and rename it into place.
    """
    try:
        parent = posixpath.dirname(loc.path)
        if parent:
            loc.fs.create_dir(parent, recursive=True)
        if loc.is_s3:

            def put() -> None:
                with loc.fs.open_output_stream(loc.path) as f:
                    f.write(data)

            retrying(put, True)
            return
        tmp = f"{loc.path}.tmp-{uuid.uuid4().hex}"
        with loc.fs.open_output_stream(tmp) as f:
            f.write(data)
        loc.fs.move(tmp, loc.path)
    except OSError as err:
        raise StorageError(f"{loc.uri}: cannot write ({_first_line(err)})") from None


def delete_file(loc: Location) -> None:
    try:
        retrying(lambda: loc.fs.delete_file(loc.path), loc.is_s3)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise StorageError(f"{loc.uri}: cannot delete ({_first_line(err)})") from None


def check_writable(loc: Location) -> None:
    """Probe that a folder can be written (creates and removes a small marker). Clear error otherwise."""
    probe = loc.join(f".write-probe-{uuid.uuid4().hex}")
    write_bytes(probe, b"ok")
    delete_file(probe)
