"""A lock held in the bucket, with expiry, so two scheduled runs never both train.

S3 conditional writes make it atomic: `If-None-Match: *` creates the lock only when there is none, and an
expired lock is taken over with `If-Match: <etag>`, so of two contenders exactly one wins (AWS S3, MinIO and
moto support both). A local path uses O_CREAT|O_EXCL the same way. A crashed holder blocks only until expiry.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

from pipelines import storage

DEFAULT_TTL_S = 6 * 3600  # longer than a fine-tune; a crashed run frees the schedule within this


class LockHeld(RuntimeError):
    """Another run holds the lock. The message names the holder and when the lock expires."""


@dataclass
class BucketLock:
    uri: str  # s3://bucket/key or a local path
    ttl_s: float = DEFAULT_TTL_S
    owner: str = ""

    def __post_init__(self) -> None:
        self.owner = self.owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._etag: str | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_at": time.time() + self.ttl_s}).encode()

    def _holder(self, data: bytes | str) -> dict:
        """The lock's content; something else at the lock's place is refused by name, never taken over."""
        try:
            holder = json.loads(data)
            float(holder["expires_at"]), str(holder["owner"])
        except (ValueError, TypeError, KeyError) as err:
            raise LockHeld(
                f"{self.uri}: not a lock this pipeline wrote ({type(err).__name__}: {err}); "
                "delete it if no retraining run is using it"
            ) from None
        return holder

    def _owner(self, data: bytes) -> str | None:
        """Who holds a lock, for release: None when the content is not a lock (then it is not ours to delete)."""
        try:
            return str(self._holder(data)["owner"])
        except LockHeld:
            return None

    # --- S3 -------------------------------------------------------------------------------------------------
    def _s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=storage.s3_endpoint(),
                            region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))  # fmt: skip

    def _where(self) -> tuple[str, str]:
        parsed = urlparse(self.uri)
        return parsed.netloc, parsed.path.lstrip("/")

    def _acquire_s3(self) -> None:
        from botocore.exceptions import ClientError

        s3, (bucket, key) = self._s3(), self._where()
        try:
            self._etag = s3.put_object(Bucket=bucket, Key=key, Body=self._body(), IfNoneMatch="*")["ETag"]
            return
        except ClientError as err:
            if err.response["Error"]["Code"] not in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise
        current = s3.get_object(Bucket=bucket, Key=key)
        holder = self._holder(current["Body"].read())
        if holder["expires_at"] > time.time():
            raise LockHeld(self._held_message(holder))
        try:  # expired: take it over, but only if nobody else did in between
            self._etag = s3.put_object(Bucket=bucket, Key=key, Body=self._body(), IfMatch=current["ETag"])["ETag"]
        except ClientError as err:
            raise LockHeld(f"{self.uri}: lock was taken over by another run just now") from err

    def _release_s3(self) -> None:
        s3, (bucket, key) = self._s3(), self._where()
        current = s3.get_object(Bucket=bucket, Key=key)
        if self._owner(current["Body"].read()) == self.owner:
            s3.delete_object(Bucket=bucket, Key=key)

    # --- local ----------------------------------------------------------------------------------------------
    def _acquire_local(self) -> None:
        path = self.uri.removeprefix("file://")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        for _ in range(2):
            # the whole body goes into a private file that is then hard-linked into place: the link appears with
            # its content or not at all, and fails if a lock exists, so no contender ever reads a half-written
            # lock (creating the lock empty and writing it after let a contender read "" and crash)
            mine = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(mine, "wb") as f:
                f.write(self._body())
            try:
                os.link(mine, path)
            except FileExistsError:
                with open(path, "rb") as f:
                    holder = self._holder(f.read())
                if holder["expires_at"] > time.time():
                    raise LockHeld(self._held_message(holder)) from None
                os.unlink(path)  # expired
                continue
            finally:
                os.unlink(mine)
            return
        raise LockHeld(f"{self.uri}: lock was taken by another run just now")

    def _release_local(self) -> None:
        path = self.uri.removeprefix("file://")
        try:
            with open(path, "rb") as f:
                if self._owner(f.read()) == self.owner:
                    os.unlink(path)
        except FileNotFoundError:
            pass

    # --- API ------------------------------------------------------------------------------------------------
    def _held_message(self, holder: dict) -> str:
        left = holder["expires_at"] - time.time()
        return f"{self.uri}: held by {holder['owner']} for another {left:.0f} s; not starting a second run"

    def acquire(self) -> BucketLock:
        self._acquire_s3() if self.uri.startswith("s3://") else self._acquire_local()
        return self

    def release(self) -> None:
        self._release_s3() if self.uri.startswith("s3://") else self._release_local()

    def __enter__(self) -> BucketLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
