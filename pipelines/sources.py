"""Where ingest reads a dataset from: a folder / bucket prefix, or the official archives as published.

Archives (.zip, .tar, .tar.gz/.tgz) are read in place, from a local disk or a bucket, without unpacking to
disk: zip through random access on the object (its central directory), tar by streaming. Unsafe entries are
refused with a reason and never read: paths that escape the archive (absolute or with `..`), links, and whole
archives whose entry count or unpacked size exceeds the configured limits (zip bombs).
"""

from __future__ import annotations

import posixpath
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field

from pipelines import storage
from pipelines.storage import Location

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_ENTRIES = 2_000_000  # MLT17 + SynthText-sized sets stay below; a crafted archive with millions more does not
MAX_UNPACKED_BYTES = 200 * 2**30  # 200 GiB: well above any public scene-text archive, far below a zip bomb


class SourceError(storage.StorageError):
    """The source as a whole cannot be used (unsafe or oversized archive, unreadable)."""


@dataclass(frozen=True)
class Limits:
    max_entries: int = MAX_ENTRIES
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES


def is_archive(uri: str) -> bool:
    return uri.lower().endswith(ARCHIVE_SUFFIXES)


def _unsafe_name(name: str) -> str | None:
    if name.startswith("/") or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        return "absolute path escapes the archive"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "path with '..' escapes the archive"
    return None


@dataclass
class FolderSource:
    """Every file below a folder or bucket prefix."""

    root: Location
    refused: list[dict] = field(default_factory=list)

    def list(self) -> list[str]:
        return storage.list_files(self.root)

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        return {n: storage.read_bytes(self.root.join(n)) for n in names}


@dataclass
class ArchiveSource:
    """The members of one archive; names are the member paths (prefixed by `tag/` when several are combined)."""

    loc: Location
    limits: Limits = field(default_factory=Limits)
    tag: str = ""
    refused: list[dict] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "zip" if self.loc.path.lower().endswith(".zip") else "tar"

    def _display(self, member: str) -> str:
        return f"{posixpath.basename(self.loc.path)}:{member}"

    def _open(self):
        try:
            return self.loc.fs.open_input_file(self.loc.path)  # seekable: zip reads only what it needs
        except FileNotFoundError:
            raise SourceError(f"{self.loc.uri}: not found") from None
        except OSError as err:
            raise SourceError(f"{self.loc.uri}: cannot open ({err})") from None

    def _check_totals(self, entries: int, unpacked: int) -> None:
        if entries > self.limits.max_entries:
            raise SourceError(f"{self.loc.uri}: refused: {entries} entries exceed the limit of {self.limits.max_entries}")
        if unpacked > self.limits.max_unpacked_bytes:
            raise SourceError(
                f"{self.loc.uri}: refused: {unpacked} unpacked bytes exceed the limit of {self.limits.max_unpacked_bytes}"
            )

    def _zip_members(self, zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
        infos = zf.infolist()
        self._check_totals(len(infos), sum(i.file_size for i in infos))
        ok = []
        for info in infos:
            if info.is_dir():
                continue
            mode = info.external_attr >> 16
            reason = _unsafe_name(info.filename) or ("link entries are not followed" if stat.S_ISLNK(mode) else None)
            if reason:
                self.refused.append({"source": self._display(info.filename), "reason": reason})
            else:
                ok.append(info)
        return ok

    def _tar_members(self, tf: tarfile.TarFile):
        """Yield safe regular-file members while streaming; refuse the rest; enforce limits as we go."""
        entries = unpacked = 0
        for member in tf:
            entries += 1
            unpacked += max(member.size, 0)
            self._check_totals(entries, unpacked)
            if member.isdir():
                continue
            reason = _unsafe_name(member.name)
            if not reason and (member.issym() or member.islnk()):
                reason = "link entries are not followed"
            elif not reason and not member.isfile():
                reason = "not a regular file"
            if reason:
                self.refused.append({"source": self._display(member.name), "reason": reason})
                continue
            yield member

    def _name(self, member: str) -> str:
        return f"{self.tag}/{member}" if self.tag else member

    def list(self) -> list[str]:
        self.refused.clear()
        with self._open() as raw:
            try:
                if self.kind == "zip":
                    with zipfile.ZipFile(raw) as zf:
                        return sorted(self._name(i.filename) for i in self._zip_members(zf))
                with tarfile.open(fileobj=raw, mode="r|*") as tf:
                    return sorted(self._name(m.name) for m in self._tar_members(tf))
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError) as err:  # ValueError: ArrowInvalid seek
                raise SourceError(f"{self.loc.uri}: not a readable {self.kind} archive ({err})") from None

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """Read the named members: zip by random access, tar in one streaming pass."""
        strip = len(self.tag) + 1 if self.tag else 0
        wanted = {n[strip:]: n for n in names}
        out: dict[str, bytes] = {}
        with self._open() as raw:
            if self.kind == "zip":
                with zipfile.ZipFile(raw) as zf:
                    for member, name in wanted.items():
                        info = zf.getinfo(member)
                        with zf.open(info) as f:
                            data = f.read(info.file_size + 1)  # never more than declared: a lying header stops here
                        if len(data) > info.file_size:
                            raise SourceError(f"{self._display(member)}: larger than its declared size")
                        out[name] = data
                return out
            with tarfile.open(fileobj=raw, mode="r|*") as tf:
                for member in self._tar_members(tf):
                    if member.name in wanted:
                        f = tf.extractfile(member)
                        out[wanted[member.name]] = f.read() if f else b""
                        if len(out) == len(wanted):
                            break
        return out


@dataclass
class CombinedSource:
    """Several archives read as one tree (IC15: the images zip + the annotations zip)."""

    parts: list[ArchiveSource]

    @property
    def refused(self) -> list[dict]:
        return [r for p in self.parts for r in p.refused]

    def list(self) -> list[str]:
        return sorted(n for p in self.parts for n in p.list())

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for part in self.parts:
            mine = [n for n in names if n.startswith(part.tag + "/")]
            if mine:
                out.update(part.read_many(mine))
        return out


Source = FolderSource | ArchiveSource | CombinedSource


def open_source(uris: list[str], limits: Limits | None = None) -> Source:
    """One folder/prefix, one archive, or several archives combined."""
    limits = limits or Limits()
    if len(uris) == 1 and not is_archive(uris[0]):
        return FolderSource(storage.resolve(uris[0]))
    if not all(is_archive(u) for u in uris):
        raise SourceError(f"{', '.join(map(storage.redact_uri, uris))}: several sources must all be archives ({', '.join(ARCHIVE_SUFFIXES)})")
    if len(uris) == 1:
        return ArchiveSource(storage.resolve(uris[0]), limits)
    parts = [ArchiveSource(storage.resolve(u), limits, tag=f"archive{i}") for i, u in enumerate(uris)]
    return CombinedSource(parts)
