"""Per-example results as bits: which examples a model got right, packed eight to a byte.

Every evaluation keeps them (clean, under each attack, the worst case), so comparisons can bootstrap
over shared examples, test pairs of λ example by example, and check attacks against each other.
"""

from __future__ import annotations

import numpy as np
import torch


def pack_bits(bits: torch.Tensor) -> str:
    """Per-example booleans as a hex string, eight examples a byte (10,000 examples: 2,500 characters)."""
    return np.packbits(bits.detach().cpu().numpy().astype(bool)).tobytes().hex()


def unpack_bits(text: str, n: int) -> np.ndarray:
    """The ``n`` booleans :func:`pack_bits` packed."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8), count=n).astype(bool)
