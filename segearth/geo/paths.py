"""Source and output names, overwrite safety and atomic writes.

* :func:`is_remote`, :func:`as_source`, :func:`source_name`, :func:`describe_source`: input
  sources are local paths or anything GDAL opens itself (URLs, ``/vsi...`` paths), which
  must stay strings: ``Path("https://h/x.tif")`` collapses the ``//``;
* :func:`output_stem` names a result after the full input stem, the question and a hash of
  everything that changes the result, so no two runs share a name by accident;
* :func:`confined_output` keeps names taken from a manifest inside the output folder;
* :func:`atomic_path` makes every writer all-or-nothing: the file is written under a
  hidden temporary name in the same folder (``.NAME.partial-XXXXXXXX.SUFFIX``, the suffix
  kept last so GDAL/PIL recognise the format) and renamed onto the final name only when
  complete. A failure or Ctrl-C leaves neither a final file nor a temporary behind, and
  write errors become one-line :class:`OutputWriteError` messages.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from segearth.errors import InputError

STEM_MAX_LEN = 150  # leaves room for suffixes like "_preview.png" under the usual 255-byte limit
GDAL_SIDE_FILES = (".aux.xml", ".msk", ".ovr")  # what GDAL may write next to a raster it creates
_QUESTION_ROOM = 40  # characters of question slug kept when a long input stem must be cut


class OutputWriteError(OSError, InputError):
    """An output file could not be written (disk full, read-only, no permission...).

    Prints as one line, ``cannot write PATH: REASON``; ``errno`` is the OS error number when
    known. It is a ``ValueError`` too, so command-line user-error handling catches it.
    """

    def __init__(self, path: str | Path, reason: str, err: int | None = None) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.errno = err
        self.path = Path(path)

    def __str__(self) -> str:  # OSError would format "[Errno N] ..." once errno is set
        return str(self.args[0])


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(source: str | Path) -> bool:
    """True for sources GDAL resolves itself: URLs (``https://``, ``s3://``, ``zip://``...) and ``/vsi`` paths."""
    if isinstance(source, Path):
        return False
    text = os.fspath(source)
    return text.startswith("/vsi") or (bool(_SCHEME.match(text)) and not text.lower().startswith("file://"))


def as_source(source: str | Path) -> Path | str:
    """A ``Path`` for a local file (``file://`` URLs included), the untouched string otherwise."""
    if isinstance(source, Path) or is_remote(source):
        return source
    text = os.fspath(source)
    return Path(unquote(urlsplit(text).path)) if text.lower().startswith("file://") else Path(text)


def source_name(source: str | Path) -> str:
    """The file-name part of a source: ``x.tif`` of ``/d/x.tif``, ``https://h/x.tif?s=1``, ``/vsizip/a.zip/x.tif``."""
    src = as_source(source)
    if isinstance(src, Path):
        return src.name
    path = re.split(r"[?#]", src, maxsplit=1)[0].rstrip("/")
    return re.split(r"[/!]", path)[-1] or src


def describe_source(source: str | Path) -> str:
    """The source for messages: local paths as given; URLs without credentials and query (signed URLs leak)."""
    src = as_source(source)
    if isinstance(src, Path):
        return str(src)
    text = re.sub(r"(://)[^/@]*@", r"\1", src)
    return re.sub(r"\?.*$", "?...", text)


def refuse_overwrite(paths: Iterable[str | Path], overwrite: bool) -> None:
    """Raise ``FileExistsError`` naming the first existing path unless ``overwrite``."""
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")


def ascii_slug(text: str, sep: str = "-") -> str:
    """Lower-case ASCII letters and digits, every other run of characters replaced by ``sep``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", sep, ascii_text.lower()).strip(sep)


def output_stem(
    source: str | Path, question: str, max_len: int = STEM_MAX_LEN, *, reading: str = "scene", model: str = ""
) -> str:
    """A filesystem-safe stem ``<input-stem>_<question-slug>_<hash8>`` of at most ``max_len`` chars.

    The input stem is kept whole (``tile_0001`` and ``tile_0002`` must not collide); only when
    the total would exceed ``max_len`` are the stem and the question slug shortened. The hash
    covers the absolute input path (or URL), the full question, ``reading`` (how the raster is read:
    ``RunOptions.reading()``, e.g. ``"tiles bands=4,1,2"``) and ``model``, so inputs or questions
    that slug alike, and runs with other bands, mode or model, never share outputs.
    """
    src = as_source(source)
    identity = str(src) if isinstance(src, str) else os.path.abspath(src)
    key = "\0".join((identity, question, reading, model))
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
    name = ascii_slug(PurePosixPath(source_name(src)).stem) or "raster"
    slug = ascii_slug(question) or "q"
    room = max_len - len(digest) - 2
    name = name[: max(room - min(len(slug), _QUESTION_ROOM), 1)].rstrip("-") or "raster"
    slug = slug[: max(room - len(name), 1)].rstrip("-") or "q"
    return f"{name}_{slug}_{digest}"


def confined_output(out_dir: Path, name: str) -> Path:
    """``out_dir / name`` (absolute) for an output name read from a manifest, refused if it could escape.

    Relative names with subfolders are allowed (``sub/x`` → ``<out_dir resolved>/sub/x``;
    the caller creates the parent). Empty names, absolute paths, ``..`` components and names that
    resolve outside ``out_dir`` (through a symbolic link) raise ``ValueError``.
    """
    text = str(name).strip()
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not text or all(p == "." for p in parts):
        raise InputError(f"output name {name!r} is empty")
    if Path(text).is_absolute() or text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", text):
        raise InputError(f"output name {name!r} is absolute; give a name relative to the output folder")
    if ".." in parts:
        raise InputError(f"output name {name!r} contains '..'; it must stay inside the output folder")
    root = Path(out_dir).resolve()
    target = root / Path(*parts)
    resolved = target.resolve()  # through symbolic links, which may point anywhere
    if resolved == root or root not in resolved.parents:
        raise InputError(f"output name {name!r} resolves outside the output folder {out_dir}")
    return target


def _partials(folder: Path, prefix: str) -> list[Path]:
    """The temporary and any side file made next to it (GDAL ``.aux.xml``, SQLite ``-journal``, staging)."""
    try:
        return [p for p in folder.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []


def _remove_partials(folder: Path, prefix: str) -> None:
    for entry in _partials(folder, prefix):
        with suppress(OSError):  # nothing more can be done; the hidden name never reads as a result
            entry.unlink()


def _probe_reason(folder: Path, prefix: str, tmp: Path) -> tuple[str, int] | None:
    """The OS reason a library hid behind its own message (GDAL says "Write error at scanline").

    Appending to the largest partial file (the one being written, deleted anyway) fails
    again with the real errno when the disk is full, the file too large for the process or
    filesystem, or the folder read-only or not writable (then the temporary cannot even be
    created).
    """
    existing = _partials(folder, prefix)
    target = max(existing, key=lambda p: p.stat().st_size) if existing else tmp
    try:
        with open(target, "ab") as probe:
            probe.write(b"\0" * 65536)
            probe.flush()
    except OSError as exc:
        return exc.strerror or str(exc), exc.errno or 0
    return None


def _library_reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__  # rasterio: "Write failed. See previous exception" + GDAL's reason
    return f"{exc}: {cause}" if cause is not None and str(cause) not in str(exc) else str(exc)


@contextmanager
def atomic_path(
    final: str | Path, overwrite: bool = False, errors: tuple[type[BaseException], ...] = ()
) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``final`` only if the block succeeds.

    Raises ``FileExistsError`` before anything is written when ``final`` exists and not
    ``overwrite``. ``OSError`` raised in the block, and the library exceptions listed in
    ``errors`` (GDAL's, pyogrio's), become :class:`OutputWriteError`; any exception,
    ``KeyboardInterrupt`` included, removes the temporary and its side files.
    """
    final = Path(final)
    refuse_overwrite([final], overwrite)
    prefix = f".{final.stem}.partial-{secrets.token_hex(4)}"
    tmp = final.with_name(prefix + final.suffix)
    committed = False
    try:
        try:
            yield tmp
            _commit(tmp, final, overwrite)
            committed = True
        except FileExistsError:
            raise
        except errors as exc:  # before OSError: rasterio's RasterioIOError is both, without an errno
            reason, err = _probe_reason(final.parent, prefix, tmp) or (_library_reason(exc), None)
            raise OutputWriteError(final, reason, err) from exc
        except OSError as exc:
            raise OutputWriteError(final, exc.strerror or str(exc), exc.errno) from exc
    finally:
        if committed:  # the temporary name (hard-link commit) and GDAL's side files; no folder scan per output
            for leftover in (tmp, *(tmp.with_name(tmp.name + side) for side in GDAL_SIDE_FILES)):
                with suppress(OSError):
                    leftover.unlink(missing_ok=True)
        else:
            _remove_partials(final.parent, prefix)


@contextmanager
def atomic_paths(paths: Mapping[str, Path], overwrite: bool = False) -> Iterator[dict[str, Path]]:
    """:func:`atomic_path` for a set of outputs that belong together (one question's mask, polygons, preview).

    The block writes them under their own names in a hidden staging folder beside them; they are moved
    into place only when the block succeeds, each committed like :func:`atomic_path` (no replacement of
    a name taken meanwhile unless ``overwrite``). Any failure removes the staging folder.
    """
    folders = {Path(p).parent for p in paths.values()}
    if len(folders) != 1:
        raise ValueError("outputs written together must share a folder")
    folder = folders.pop()
    refuse_overwrite(paths.values(), overwrite)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".segearth-partial-", dir=folder))
    except OSError as exc:
        raise OutputWriteError(folder, exc.strerror or str(exc), exc.errno) from None
    try:
        yield {key: stage / Path(p).name for key, p in paths.items()}
        for final in paths.values():
            _commit(stage / Path(final).name, Path(final), overwrite)
    except (OutputWriteError, FileExistsError):
        raise
    except OSError as exc:
        raise OutputWriteError(folder, exc.strerror or str(exc), exc.errno) from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _commit(tmp: Path, final: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, final)
        return
    # A hard link creates the name only if it is still free, so a concurrent run that wrote
    # the same output since the check above is not silently replaced.
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise FileExistsError(f"{final} already exists; pass overwrite=True (--overwrite) to replace it") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        os.replace(tmp, final)  # a filesystem without hard links: the overwrite check above stands
