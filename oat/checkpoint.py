"""Checkpoints that survive: atomic writes, safe loads.

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)``: a file that smuggles a pickled object is refused instead of
executed. It is serialised in memory, written to a unique temporary file in the same directory,
flushed to disk, then renamed over the old one, so a run killed at any moment leaves the previous
checkpoint or the new one, never half of either (plus, at worst, a temporary that
:func:`remove_orphans` clears).

Loading tells a damaged file from a hostile one. torch's zip archives carry a CRC-32 per record,
which torch itself never checks; oat checks them (and the archive's structure) before unpickling
anything. A file that fails is truncated or corrupt. Only a file that is intact, exactly as its
writer made it, and still refused by the weights-only unpickler, is reported as smuggling objects.
"""

from __future__ import annotations

import io
import locale
import lzma
import os
import pickle
import pickletools
import re
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch

FORMAT_VERSION = 1
EXPORT_FORMAT = "oat-export"  # the "format" entry of a file oat export writes (oat.deploy)

# The permissions an ordinary new file gets (os.umask both sets and returns it: read it once, at import).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
# tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") names: 8 characters of [a-z0-9_] in between.
_ORPHAN = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")

# What torch's weights-only unpickler says when the pickle names a global, calls a function or
# builds an object it does not allow (torch 2.x wording; the opcode scan below covers the rest).
_REFUSED = re.compile(
    r"GLOBAL (\S+) was not an allowed global|GLOBAL (\S+) whose module \S+ is blocked"
    r"|call reduce for unrecognized function (<[^>]*>|\S+)|Can only (?:create new object|build)[^\n]* got (<[^>]*>|\S+)"
)
# Opcodes that import or instantiate by name but that torch.save (pickle protocol 2) never writes:
# in a zip they can only have been put there on purpose, whatever the unpickler complained of first.
_FOREIGN_IMPORTS = {"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"}
_DOS_FOLDER = 0x10  # a zip record's external attributes: MS-DOS "directory"
# How much of a file that is not a zip archive is read to judge it (raw pickles are small).
_SCAN_LIMIT = 64 << 20
# torch's pre-1.6 (non-zip) format opens with this number, pickled with protocol 2 (its default).
_LEGACY_START = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
# Opcodes that push a string (a module or name STACK_GLOBAL may take from the stack).
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
# What zipfile raises reading a damaged archive: bad headers or CRC (BadZipFile), offsets past the
# end (EOFError, ValueError for a negative seek), undecodable names (UnicodeDecodeError), flipped
# method, version or encryption bits (NotImplementedError, RuntimeError), garbage in a compressed
# record (zlib.error, lzma.LZMAError, OSError from bz2) and the disk itself failing (OSError).
_DAMAGED_ZIP = (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError, OSError,
                zlib.error, lzma.LZMAError)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, not oat's, or unsafe."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (unique temporary file, fsync, rename).

    A full disk or a file-size limit raises :class:`OSError` (ENOSPC, EFBIG …) naming ``path``;
    the temporary is removed and the previous checkpoint is untouched.
    """
    buffer = io.BytesIO()
    # Serialise in memory first: torch.save streaming into a file turns ENOSPC into a C++
    # RuntimeError ("inline_container.cc: unexpected pos") without errno or file name.
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    with buffer.getbuffer() as data:  # a view, not a second copy of the checkpoint
        _write_atomic(Path(path), data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a small text file (JSON, YAML, metrics) so readers see the old or the new one, never half."""
    # The encoding Path.write_text/read_text use by default, which the readers of these files use.
    _write_atomic(Path(path), text.encode(locale.getpreferredencoding(False)))


def write_bytes_atomic(path: str | Path, data: bytes | memoryview) -> None:
    """Write a file (an exported model) so readers see the old or the new one, never half."""
    _write_atomic(Path(path), data)


def remove_orphans(directory: str | Path) -> list[Path]:
    """Remove the temporaries (``.NAME.<8 random characters>.tmp``) that atomic writes killed
    midway left in ``directory``; returns them. Only for a directory no one is writing to at the
    moment: a live writer's temporary looks the same."""
    removed = []
    with os.scandir(directory) as entries:
        orphans = sorted(entry.path for entry in entries
                         if _ORPHAN.fullmatch(entry.name) and entry.is_file(follow_symlinks=False))
    for orphan in orphans:
        try:
            os.unlink(orphan)
        except FileNotFoundError:  # removed by someone else meanwhile: not ours to report
            continue
        removed.append(Path(orphan))
    return removed


def _write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a unique temporary beside ``path``, fsync it, rename it over ``path``.
    Every OSError names ``path``, the file asked for, never the temporary."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:  # a read-only or missing place: the temporary's name would mislead
        raise OSError(error.errno, error.strerror, str(path)) from None
    try:
        try:
            try:
                _chmod_like_a_new_file(fd)
                view = memoryview(data)
                while view:  # os.write may write less than asked (a file-size limit, a signal)
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:  # os.write names no file: say which one could not be written
            raise OSError(error.errno, error.strerror, str(path)) from None
        try:
            os.replace(tmp, path)
        except OSError as error:  # e.g. path is a directory
            raise OSError(error.errno, error.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _chmod_like_a_new_file(fd: int) -> None:
    try:  # mkstemp's 0600 would hide the run from its group; best effort, as some file systems refuse
        os.fchmod(fd, 0o666 & ~_UMASK)
    except OSError:
        pass


def _fsync_directory(directory: Path) -> None:
    try:  # make the rename itself durable; not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    exported: bool = False) -> dict[str, Any]:
    """Load an oat checkpoint safely (``weights_only=True``), with one-line errors; a folded
    network ``oat export`` wrote only with ``exported=True`` (it holds no config to train from).

    The archive's structure and CRCs are checked first, so a damaged file is reported as
    "truncated or corrupt", and only an intact one that holds pickled objects as "refusing …".
    A file that is not a zip archive (a raw pickle, torch's legacy format) is never unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as handle:  # one handle: what is checked is what is loaded
        pickled = _intact_pickle(path, handle)
        handle.seek(0)
        try:
            state = torch.load(handle, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            smuggled = _refused_name(str(error)) or _foreign_import(pickled)
            if smuggled:
                raise _unsafe(path, smuggled) from None
            raise CheckpointError(f"{path} is truncated or corrupt ({_unpickler_detail(error)})") from None
        # Only torch's unpickler and the rebuild functions it allows run in here, on the file's
        # data; on an intact archive whatever they raise describes the file, not a bug of oat's.
        except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError) as error:
            raise CheckpointError(f"{path} is truncated or corrupt ({first_line(error)})") from None
    if isinstance(state, dict) and "model" in state and _exported(state):
        if exported:
            return state
        raise CheckpointError(f"{path} is a model written by oat export, not a training checkpoint: it keeps no "
                              "config to evaluate or train from; use the checkpoint it was exported from")
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not an oat checkpoint (no model weights and config)")
    return state


def _exported(state: dict) -> bool:
    """Whether ``state`` is a folded network ``oat export`` wrote (weights and spec, no config)."""
    return state.get("format") == EXPORT_FORMAT and "model_spec" in state


def _intact_pickle(path: Path, handle: BinaryIO) -> bytes:
    """Check the zip's structure and every record's CRC-32; return the ``data.pkl`` record."""
    try:
        is_zip = zipfile.is_zipfile(handle)  # an end-of-archive record, maybe a damaged one
        if is_zip:
            with zipfile.ZipFile(handle) as archive:
                for info in archive.infolist():
                    # miniz, torch's zip reader, skips a record it takes for a folder (name ending
                    # in "/" or the DOS folder bit, which zipfile ignores) and hands torch whatever
                    # its buffer held instead; torch never writes folders.
                    if info.is_dir() or info.external_attr & _DOS_FOLDER:
                        raise zipfile.BadZipFile(f"record {info.filename!r} is marked as a folder")
                    with archive.open(info) as record:
                        while record.read(1 << 20):  # reading a record to its end checks its CRC-32
                            pass
                names = archive.namelist()
                # torch keeps every record under one top-level folder (the name it was saved under)
                data_pkl = f"{names[0].split('/')[0]}/data.pkl" if names else None
                pickled = archive.read(data_pkl) if data_pkl in names else None
    except _DAMAGED_ZIP as error:
        raise CheckpointError(f"{path} is truncated or corrupt ({first_line(error)})") from None
    if not is_zip:
        handle.seek(0)
        raise _not_a_zip(path, handle)
    if pickled is None:
        raise CheckpointError(f"{path} is truncated or corrupt (the archive has no data.pkl)")
    return pickled


def _not_a_zip(path: Path, handle: BinaryIO) -> CheckpointError:
    """The error for a file that is not a zip archive, judged without unpickling it: a raw pickle
    that imports names (which could run code), torch's legacy format, or anything else."""
    # Parsed from memory: reading a length field's worth from a file (a garbage "string of 2**63
    # bytes") would allocate that much, where an in-memory stream just runs out.
    head = handle.read(_SCAN_LIMIT)
    try:
        imports = [name for _, name in _imports(head)]
    except ValueError:  # not one complete pickle
        return CheckpointError(f"{path} is truncated or corrupt (not a zip archive)")
    if imports:
        return _unsafe(path, imports[0])
    if head.startswith(_LEGACY_START):
        return CheckpointError(f"{path} is in PyTorch's legacy (pre-1.6) format, which oat does not read; "
                               "save it again with torch.save")
    return CheckpointError(f"{path} is truncated or corrupt (not a zip archive)")


def _foreign_import(pickled: bytes) -> str | None:
    """The first import in ``pickled`` by an opcode torch.save never writes, if any."""
    try:
        return next((name for opcode, name in _imports(pickled) if opcode in _FOREIGN_IMPORTS), None)
    except ValueError:  # a malformed pickle: whatever it is, it is not a well-formed smuggler
        return None


def _imports(pickled: bytes) -> Iterator[tuple[str, str]]:
    """(opcode, "module.name") for each import in the first pickle of ``pickled``, read by
    pickletools' parser, which executes nothing; ValueError where it stops being a pickle."""
    memo: dict = {}
    recent: list = [None, None]  # the last two values pushed, where they are strings
    for opcode, arg, _ in pickletools.genops(pickled):
        name = opcode.name
        if name in ("GLOBAL", "INST"):  # they carry "module name"
            yield name, arg.replace(" ", ".")
        elif name == "STACK_GLOBAL":  # takes module and name from the stack: the last two strings
            module, attr = recent
            known = isinstance(module, str) and isinstance(attr, str)
            yield name, f"{module}.{attr}" if known else "an object built by STACK_GLOBAL"
        elif name in _FOREIGN_IMPORTS:
            yield name, f"an object built by {name}"
        if name == "MEMOIZE":
            memo[len(memo)] = recent[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = recent[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            recent = [recent[-1], memo.get(arg)]
        elif name not in ("PROTO", "FRAME", "STOP"):  # every other opcode leaves a value on the stack
            recent = [recent[-1], arg if name in _STRINGS and isinstance(arg, str) else None]


def _refused_name(message: str) -> str | None:
    match = _REFUSED.search(message)
    return next((name for name in match.groups() if name), "an object") if match else None


def _unsafe(path: Path, name: str) -> CheckpointError:
    return CheckpointError(
        f"refusing {path}: it contains pickled Python objects ({name}), which could run code when "
        "loaded; oat checkpoints hold only tensors and plain values"
    )


def _unpickler_detail(error: pickle.UnpicklingError) -> str:
    # torch wraps the unpickler's own message in paragraphs of advice; keep the message itself
    match = re.search(r"WeightsUnpickler error:\s*(.+)|(Unsupported operand \d+)", str(error))
    return next(text for text in match.groups() if text).strip() if match else "the weights-only unpickler refused it"


def first_line(error: BaseException) -> str:
    """An exception's first line (or its type's name): enough for a one-line error message."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
