"""Label Studio's brush RLE: the bit-packed run-length code of thi.ng's ``rle-pack`` over RGBA pixels.

A ``BrushLabels`` result stores its mask as ``value.rle``: a list of bytes encoding the image's
H x W x 4 RGBA canvas, flattened row by row (the mask is the alpha channel). The bit stream is::

    32 bits   number of values (H * W * 4)
     5 bits   word size - 1
    4 x 4     the four run-length field sizes - 1 (Label Studio writes 3, 4, 8, 16)
    then, until every value is read, one chunk:
     1 bit    1 = a run of one repeated value, 0 = literal values
     2 bits   which field size the length uses
     n bits   length - 1
              the repeated value (one word), or length words

`encode` writes exactly what ``label_studio_sdk.converter.brush.mask2rle`` writes (the test compares
bytes with the SDK's codec), vectorised with NumPy; `decode` reads any stream the format allows (Label
Studio's editor writes literal chunks too). The SDK itself is not a dependency: its pins (NumPy, OpenCV)
clash with ours.
"""
from __future__ import annotations

import numpy as np

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)
CHANNELS = 4
MAX_VALUES = 4 * 200_000_000  # 200 megapixels: larger streams are refused before any allocation


class RLEError(ValueError):
    """A brush RLE stream that cannot be read; the message says why."""


def _fields(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Bits (uint8 0/1, most significant first) of each value written with its width."""
    widths = widths.astype(np.int64)
    total = int(widths.sum())
    owner = np.repeat(np.arange(len(widths)), widths)
    starts = np.cumsum(widths) - widths
    shift = (widths[owner] - 1 - (np.arange(total) - starts[owner])).astype(np.uint64)
    return ((values.astype(np.uint64)[owner] >> shift) & np.uint64(1)).astype(np.uint8)


def runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of the runs of a 1-d array."""
    if flat.size == 0:
        return flat[:0], np.zeros(0, np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return flat[starts], lengths


def encode(mask: np.ndarray) -> list[int]:
    """(H, W) mask (bool, or uint8 0..255) -> Label Studio brush RLE (list of byte values).

    A bool mask is written as 0 / 255 in all four channels, as the SDK's ``mask2rle(mask * 255)``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise RLEError(f"a brush mask is 2-d (H, W), got shape {mask.shape}")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    elif mask.dtype != np.uint8:
        raise RLEError(f"a brush mask is bool or uint8, got {mask.dtype}")
    values, lengths = runs(mask.ravel())
    lengths = lengths * CHANNELS  # every pixel's value repeats in its four channels
    # The field size follows the run's length; runs longer than 2**16 are written as 2**16-long pieces
    # and a rest, all with the 16-bit field (as the SDK does).
    single = lengths == 1  # a literal chunk of one value: "0 00 000 value"
    size_index = np.select([single, lengths <= 8, lengths <= 16, lengths <= 256], [0, 0, 1, 2], 3)
    pieces = np.maximum(1, -(-lengths // 2**16))
    first = np.cumsum(pieces) - pieces
    piece_index = np.arange(int(pieces.sum())) - np.repeat(first, pieces)
    last = piece_index == np.repeat(pieces, pieces) - 1
    values, single, size_index = (np.repeat(a, pieces) for a in (values, single, size_index))
    lengths = np.where(last, np.repeat(lengths, pieces) - 2**16 * piece_index, 2**16)
    sizes = np.asarray(RLE_SIZES)[size_index]
    n = len(lengths)
    chunk_values = np.stack([(~single).astype(np.int64), size_index, np.where(single, 0, lengths - 1),
                             values.astype(np.int64)], axis=1).ravel()
    chunk_widths = np.stack([np.ones(n, np.int64), np.full(n, 2), sizes, np.full(n, WORD_SIZE)], axis=1).ravel()
    header_values = np.array([mask.size * CHANNELS, WORD_SIZE - 1, *(s - 1 for s in RLE_SIZES)], np.int64)
    header_widths = np.array([32, 5, 4, 4, 4, 4], np.int64)
    bits = _fields(np.concatenate([header_values, chunk_values]), np.concatenate([header_widths, chunk_widths]))
    bits = np.concatenate([bits, np.zeros(8 - bits.size % 8, np.uint8)])  # the SDK always pads, 1..8 bits
    return np.packbits(bits).tolist()


class _Bits:
    """Reads unsigned fields from a bit string ('0'/'1' characters)."""

    def __init__(self, data: bytes):
        self.text = (np.unpackbits(np.frombuffer(data, np.uint8)) + ord("0")).tobytes().decode("ascii")
        self.pos = 0

    def read(self, width: int) -> int:
        end = self.pos + width
        if end > len(self.text):
            raise RLEError("the brush RLE ends early (truncated or not Label Studio's RLE)")
        value = int(self.text[self.pos:end], 2)
        self.pos = end
        return value

    def words(self, count: int, width: int) -> np.ndarray:
        end = self.pos + count * width
        if end > len(self.text):
            raise RLEError("the brush RLE ends early (truncated or not Label Studio's RLE)")
        bits = np.frombuffer(self.text[self.pos:end].encode("ascii"), np.uint8).reshape(count, width) - ord("0")
        self.pos = end
        return (bits.astype(np.uint64) << np.arange(width - 1, -1, -1, dtype=np.uint64)).sum(axis=1)


def _as_bytes(rle) -> bytes:
    if isinstance(rle, (bytes, bytearray)):
        return bytes(rle)
    if not isinstance(rle, (list, tuple)) or not all(isinstance(v, int) and 0 <= v <= 255 for v in rle):
        raise RLEError("a brush RLE is a list of byte values (integers 0..255)")
    return bytes(rle)


def decode_values(rle, expected: int | None = None) -> np.ndarray:
    """A brush RLE stream -> its flat values (uint8/16/32 by word size)."""
    bits = _Bits(_as_bytes(rle))
    num = bits.read(32)
    if expected is not None and num != expected:
        raise RLEError(f"the brush RLE holds {num} values, expected {expected} (height x width x 4)")
    if num > MAX_VALUES:
        raise RLEError(f"the brush RLE holds {num} values, more than {MAX_VALUES}")
    word = bits.read(5) + 1
    sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint8 if word < 9 else np.uint16 if word < 17 else np.uint32)
    i = 0
    while i < num:
        repeated = bits.read(1)
        j = min(num, i + 1 + bits.read(sizes[bits.read(2)]))
        if repeated:
            out[i:j] = bits.read(word)
        else:
            out[i:j] = bits.words(j - i, word)
        i = j
    return out


def decode(rle, height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE -> (H, W) bool mask (alpha >= 128)."""
    values = decode_values(rle, int(height) * int(width) * CHANNELS)
    return values.reshape(int(height), int(width), CHANNELS)[:, :, 3] >= 128
