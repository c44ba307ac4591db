"""Where results live: a local folder (or a mount every node shares) or an object-store URI such as
``s3://bucket/prefix`` or ``gs://bucket/prefix``, reached through pyarrow.fs. S3 URIs take pyarrow's
query options, e.g. ``?endpoint_override=host:9000&scheme=http`` for MinIO; credentials come from
the usual environment variables (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...). A GCS URI
may add ``anonymous=true`` (no credentials: a GCS emulator, or a bucket open to everyone).

Torch-free and Ray-free: the CLI, the core (teachers), the results layer and every trial share it.
A ``Location`` names a file or folder below such a root and reads, writes (atomically), lists and
deletes it. What must stay on the driver's own disk (Ray's log, plots, the Optuna journal) lives
in ``mirror(location)``: the folder itself when it is local, else a folder in the local cache.
"""
from __future__ import annotations

import functools
import hashlib
import os
import posixpath
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:  # pyarrow is imported when a location is used: `bkdbench --help` stays instant
    import pyarrow.fs as pafs

CACHE_ENV = "BKDBENCH_CACHE"


class LocationError(ValueError):
    """A location that cannot be used: a malformed or unknown URI, or one that cannot be written."""


class Location:
    """A local path or an object-store URI; ``/`` joins, the query (endpoint options) is kept."""

    __slots__ = ("base", "query")

    def __init__(self, value: "str | os.PathLike | Location"):
        if isinstance(value, Location):
            base, query = value.base, value.query
        else:
            text = os.fspath(value)
            if not text:
                raise LocationError("empty location")
            base, query = _parse(text) if "://" in text else (os.path.abspath(os.path.expanduser(text)), "")
        self.base, self.query = base, query

    @classmethod
    def _make(cls, base: str, query: str) -> "Location":
        made = cls.__new__(cls)
        made.base, made.query = base, query
        return made

    # --- naming -------------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return "://" not in self.base

    @property
    def local(self) -> Path:
        if not self.is_local:
            raise LocationError(f"{self} is an object-store URI, not a local path")
        return Path(self.base)

    def __fspath__(self) -> str:
        # Only a local location is a path: a URI must never become a folder named "s3:".
        if not self.is_local:
            raise TypeError(f"{self} is an object-store URI, not a local path")
        return self.base

    def __truediv__(self, part: "str | os.PathLike") -> "Location":
        part = os.fspath(part)
        if self.is_local:
            return Location._make(os.path.join(self.base, part), "")
        return Location._make(self.base.rstrip("/") + "/" + part.strip("/"), self.query)

    @property
    def name(self) -> str:
        return posixpath.basename(self.base.rstrip("/"))

    @property
    def parent(self) -> "Location":
        if self.is_local:
            return Location._make(os.path.dirname(self.base), "")
        scheme, rest = self.base.split("://", 1)
        return Location._make(f"{scheme}://{posixpath.dirname(rest)}" if "/" in rest else self.base, self.query)

    def __str__(self) -> str:
        return self.base + (f"?{self.query}" if self.query else "")

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and (self.base, self.query) == (other.base, other.query)

    def __hash__(self) -> int:
        return hash((self.base, self.query))

    def __reduce__(self):
        return Location, (str(self),)

    # --- pyarrow --------------------------------------------------------------------------------

    def filesystem(self) -> tuple["pafs.FileSystem", str]:
        """(pyarrow filesystem, path on it). Opening a URI's filesystem can raise LocationError."""
        if self.is_local:
            import pyarrow.fs as pafs

            return pafs.LocalFileSystem(), self.base
        scheme, rest = self.base.split("://", 1)
        bucket, _, key = rest.partition("/")
        fs, root = _open(f"{scheme}://{bucket}" + (f"?{self.query}" if self.query else ""))
        if not key:
            return fs, root
        return fs, f"{root.rstrip('/')}/{key}" if root else f"/{key}"

    def tune_storage(self) -> tuple[str, Optional["pafs.FileSystem"]]:
        """(storage_path, storage_filesystem) for Ray Tune: a URI's path is given prefix-stripped,
        with its filesystem, so that endpoint options reach Tune (a bare URI would lose them)."""
        if self.is_local:
            return self.base, None
        fs, path = self.filesystem()
        return path, fs

    # --- reading and writing --------------------------------------------------------------------

    def exists(self) -> bool:
        if self.is_local:
            return os.path.exists(self.base)
        import pyarrow.fs as pafs

        fs, path = self.filesystem()
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        """The file's bytes; FileNotFoundError when there is none, OSError when storage fails."""
        if self.is_local:
            return Path(self.base).read_bytes()
        fs, path = self.filesystem()
        with fs.open_input_stream(path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        """Replace the file atomically: readers see the old content or the new, never half.
        Locally a unique temp file is renamed into place; an object-store PUT is atomic itself."""
        if not self.is_local:
            fs, path = self.filesystem()
            with fs.open_output_stream(path) as out:
                out.write(data)
            return
        folder, name = os.path.split(self.base)
        os.makedirs(folder, exist_ok=True)
        # Hidden and unique per writer: parallel writers never share a temp file, listings skip it.
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())  # data on disk before the rename makes it visible
            os.replace(tmp, self.base)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        _fsync_dir(folder)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def list(self) -> list[str]:
        """Names of the files and folders directly inside (none when the folder is missing)."""
        if self.is_local:
            try:
                return sorted(os.listdir(self.base))
            except (FileNotFoundError, NotADirectoryError):
                return []
        import pyarrow.fs as pafs

        fs, path = self.filesystem()
        # GCS has prefixes, not folders: Arrow lists a "folder" there only when a marker object exists,
        # which Tune and bkdbench never write. So the names inside come from a recursive listing.
        deep = self.base.startswith("gs://")
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=deep))
        return sorted({info.path[len(path):].strip("/").split("/")[0] for info in infos})

    def make_dir(self) -> None:
        if self.is_local:
            os.makedirs(self.base, exist_ok=True)
            return
        fs, path = self.filesystem()
        fs.create_dir(path, recursive=True)

    def delete(self) -> None:
        """Remove the file, or the folder with everything in it; nothing to do when missing."""
        if self.is_local:
            if os.path.isdir(self.base) and not os.path.islink(self.base):
                shutil.rmtree(self.base, ignore_errors=True)
            elif os.path.lexists(self.base):
                os.remove(self.base)
            return
        import pyarrow.fs as pafs

        fs, path = self.filesystem()
        kind = fs.get_file_info(path).type
        if kind == pafs.FileType.Directory:
            try:
                fs.delete_dir(path)
            except FileNotFoundError:  # GCS: the objects are gone; the folder had no marker object
                pass
        elif kind == pafs.FileType.File:
            fs.delete_file(path)

    def check_writable(self) -> None:
        """Prove a file can be written and removed here, creating nothing: a local folder that does not
        exist yet is checked at its nearest existing parent (where it would be created), so a command
        refused later for another reason leaves no empty folder behind."""
        where = self
        if self.is_local:
            existing = self.local
            while not existing.exists() and existing != existing.parent:
                existing = existing.parent
            if not existing.is_dir():
                raise LocationError(f"cannot write to {self}: {existing} is a file, not a folder")
            where = Location(existing)
        probe = where / f".bkdbench-write-check-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"ok")
            probe.delete()
        except OSError as exc:
            raise LocationError(f"cannot write to {self}: {exc}") from exc


def _parse(text: str) -> tuple[str, str]:
    """A URI's (base without query, query). ``file://`` URIs are local paths."""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if not scheme:
        raise LocationError(f"malformed location {text!r}")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise LocationError(f"a file:// URI names a local path, not the host {parts.netloc!r}: {text!r}")
        return os.path.abspath(unquote(parts.path)), ""
    if not parts.netloc:
        raise LocationError(f"{text!r} names no bucket: use {scheme}://BUCKET/PREFIX")
    key = [p for p in parts.path.split("/") if p]
    if any(p in (".", "..") for p in key):
        raise LocationError(f"{text!r}: '.' and '..' are not allowed in an object-store path")
    return f"{scheme}://{parts.netloc}" + "".join("/" + p for p in key), parts.query


@functools.lru_cache(maxsize=None)
def _open(root: str) -> tuple["pafs.FileSystem", str]:
    # Once per bucket and options: opening an S3 filesystem may ask AWS for the bucket's region.
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        parts = urlsplit(root)
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        if parts.scheme == "gs" and "anonymous" in options:
            return _gcs_anonymous(parts.netloc, options)
        return pafs.FileSystem.from_uri(root)
    except (pa.ArrowInvalid, ValueError) as exc:
        hint = "; use a local path, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX" if "Unrecognized" in str(exc) else ""
        raise LocationError(f"cannot use the storage {root}: {exc}{hint}") from None
    except OSError as exc:  # e.g. the bucket's region cannot be resolved (no network, no such bucket)
        raise LocationError(f"cannot reach the storage {root}: {exc}") from None


def _gcs_anonymous(bucket: str, options: dict) -> tuple["pafs.FileSystem", str]:
    """``gs://BUCKET?anonymous=true&endpoint_override=HOST:PORT&scheme=http``: GCS without
    credentials, for a GCS emulator or a bucket open to all. pyarrow's URI parser has no such option
    (it always asks for Google credentials), so the filesystem is built from the query here."""
    from datetime import timedelta

    import pyarrow.fs as pafs

    if options.pop("anonymous").lower() not in ("true", "1", "yes"):
        raise ValueError("anonymous= takes true (credentials are otherwise found as usual: leave it out)")
    kwargs = {"anonymous": True}
    for name in ("endpoint_override", "scheme", "default_bucket_location", "project_id"):
        if name in options:
            kwargs[name] = options.pop(name)
    if "retry_limit_seconds" in options:
        kwargs["retry_time_limit"] = timedelta(seconds=float(options.pop("retry_limit_seconds")))
    if options:
        raise ValueError(f"unexpected query parameter in GCS URI: {', '.join(sorted(options))}")
    return pafs.GcsFileSystem(**kwargs), bucket


def _fsync_dir(folder: str) -> None:
    """Persist a rename itself; best effort (not every platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- what stays on the driver ----------------------------------------------------------------

def cache_root() -> Path:
    """``$BKDBENCH_CACHE``, else ``~/.cache/bkdbench``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/bkdbench").expanduser()


def mirror(location: "str | os.PathLike | Location") -> Path:
    """A driver-local path standing in for ``location``: itself when local; for a URI, a path in
    ``<cache>/storage/`` named after it (and its endpoint options), so distinct stores never mix."""
    loc = Location(location)
    if loc.is_local:
        return loc.local
    scheme, rest = loc.base.split("://", 1)
    bucket, _, key = rest.partition("/")
    if loc.query:
        bucket += "-" + hashlib.sha256(loc.query.encode()).hexdigest()[:8]
    return cache_root() / "storage" / scheme / bucket / key


def pull(location: "str | os.PathLike | Location") -> Path:
    """The driver-local copy of a file kept at ``location``, fetched once per process (later calls
    return the copy, which this driver may have extended since). The stored file is the truth (none
    stored: no local copy either), except for a local copy that extends it, as an append-only
    journal does when its last upload did not happen."""
    loc = Location(location)
    path = mirror(loc)
    if loc.is_local or loc in _pulled:
        return path
    try:
        stored = loc.read_bytes()
    except FileNotFoundError:
        stored = None
    _pulled.add(loc)
    if stored is None:
        path.unlink(missing_ok=True)
        return path
    if path.exists():
        mine = path.read_bytes()
        if len(mine) >= len(stored) and mine.startswith(stored):
            return path
    Location(path).write_bytes(stored)
    return path


_pulled: set = set()  # locations this process has fetched; its own copy is newer from then on


def push(location: "str | os.PathLike | Location") -> None:
    """Upload the driver-local copy of ``location`` (from ``pull``) to it; nothing to do locally."""
    loc = Location(location)
    path = mirror(loc)
    if not loc.is_local and path.exists():
        loc.write_bytes(path.read_bytes())


__all__ = ["Location", "LocationError", "cache_root", "mirror", "pull", "push"]


def file_digest(path: "str | os.PathLike") -> str:
    """The SHA-256 of a local file's bytes (hex), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
