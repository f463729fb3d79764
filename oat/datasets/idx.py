"""The IDX format of MNIST and Fashion-MNIST (LeCun et al.), read from plain or gzipped files.

An IDX file is two zero bytes, a byte naming the element type (0x08 unsigned byte …), a byte
giving the number of dimensions, each dimension as a big-endian int32, then the elements in C
order. Reading decompresses in memory and writes nothing: a read-only system folder such as
Debian's ``/usr/share/datasets/fashion-mnist`` is read where it lies.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array in IDX file ``path`` (``.gz`` is decompressed); ``ValueError`` naming the file
    when it is not IDX, is truncated, or holds more or less data than its header says."""
    path = Path(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise ValueError(f"{path} is not a readable gzip file ({error})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = _TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated (its header names {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path} holds {len(data) - header} bytes of data, its header says {expected} "
                         f"(shape {list(shape)}): truncated or corrupt")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
