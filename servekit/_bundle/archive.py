"""A bundle folder as a reproducible `.tar.gz`, and back.

The same files give the same bytes: entries sorted by path, one fixed mtime
(`SOURCE_DATE_EPOCH`, else 0), uid/gid 0 with no owner names, modes 0644 (0755 where the owner
may execute), and a gzip header with no name and no timestamp. Unpacking refuses links and
paths that leave the target folder (tarfile's "data" filter).
"""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

from servekit.errors import BundleError

COMPRESS_LEVEL = 9


def source_date_epoch() -> int:
    """The timestamp every entry gets: `SOURCE_DATE_EPOCH` when set (reproducible-builds.org), else 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    try:
        return int(value) if value else 0
    except ValueError:
        raise BundleError(
            f"SOURCE_DATE_EPOCH must be whole seconds, like 1700000000; got {value!r}"
        ) from None


def write_archive(folder: Path, paths: list[str], destination: Path) -> None:
    """Write `paths` (relative to `folder`) to `destination` as a reproducible tar.gz."""
    mtime = source_date_epoch()
    tmp = destination.with_name(destination.name + ".part")
    with (  # streamed to disk: a bundle with large models never sits in memory
        tmp.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=COMPRESS_LEVEL) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for path in sorted(paths):
            source = folder / path
            info = tarfile.TarInfo(path)
            info.size = source.stat().st_size
            info.mtime = mtime
            info.mode = 0o755 if os.access(source, os.X_OK) else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with source.open("rb") as file:
                tar.addfile(info, file)
    tmp.replace(destination)


def unpack_archive(archive: Path, destination: Path) -> None:
    """Unpack the bundle `archive` into the new folder `destination`."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    raise BundleError(
                        f"bundle {str(archive)!r} holds {member.name!r}, which is not a plain file; "
                        "bundles hold files only: rebuild it with servekit build"
                    )
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, EOFError, gzip.BadGzipFile) as exc:
        raise BundleError(
            f"{str(archive)!r} is not a readable bundle archive ({exc}); fetch it again"
        ) from None
