"""Arrays on the wire: raw little-endian bytes, zlib-compressed, with dtype and shape in metadata. No pickle.

An image's id is the SHA-256 of its canonical header line and raw bytes (see `image_id`), so a client can
compute it before uploading and the same volume always maps to the same cache entry.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import math
import zlib

import numpy as np
from MedalSLib.client import image_header  # the Slicer module's client, carried by the medals wheel

from ..errors import InputError
from ..io import check_spacing, count_unusable_voxels
from ..orientation import check_direction

IMAGE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
"""Voxel types an uploaded image may have (sent little-endian)."""

PROBABILITY_SCALE = 255
"""Probabilities travel as uint8 v = round(p · 255): v / 255 is within 1/510 of the engine's value."""

COMPRESSION_LEVEL = 1
"""zlib level for arrays the server sends: labels are mostly background, so level 1 is nearly as small as 9."""


def wire_dtype(name: str) -> np.dtype:
    """The little-endian numpy dtype of an allowed wire type name ("int16" → <i2)."""
    if name not in IMAGE_DTYPES:
        raise InputError(f"dtype {name!r} is not accepted; use one of {', '.join(IMAGE_DTYPES)}")
    return np.dtype(name).newbyteorder("<")


def parse_shape(text: str) -> tuple[int, int, int]:
    """"200,256,256" → (200, 256, 256): a (k, j, i) shape of three positive integers."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"shape {text!r} is not three comma-separated integers (k,j,i)") from None
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"shape {text!r} must be three positive integers (k,j,i)")
    return shape


def parse_spacing(text: str) -> tuple[float, float, float]:
    """"2.5,0.8,0.8" → (2.5, 0.8, 0.8): voxel size in mm along (k, j, i), finite and positive."""
    try:
        spacing = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"spacing {text!r} is not three comma-separated numbers in mm (k,j,i)") from None
    if len(spacing) != 3:
        raise InputError(f"spacing {text!r} must be three finite positive numbers in mm (k,j,i)")
    return check_spacing(spacing, f"spacing {text!r} (k,j,i)")


def parse_direction(text: str | None) -> tuple[float, ...] | None:
    """"-1,0,0,0,-1,0,0,0,1" → the ITK direction matrix (row-major, LPS) as nine numbers; None when not sent."""
    if text is None:
        return None
    try:
        direction = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"direction {text!r} is not nine comma-separated numbers") from None
    if len(direction) != 9:
        raise InputError(f"direction {text!r} must be nine finite numbers forming an invertible 3×3 matrix")
    check_direction(direction)
    return direction


def image_id(dtype: str, shape, spacing, raw, direction=None) -> str:
    """SHA-256 (hex) of the client's canonical header line (`image_header`) + the raw little-endian voxel bytes:
    one definition on both sides, so client and server always name an image alike."""
    digest = hashlib.sha256(image_header(dtype, shape, spacing, direction))
    digest.update(raw)
    return digest.hexdigest()


class ExactInflater:
    """Inflates a zlib stream fed in chunks into a buffer that grows to at most `nbytes`, never holding more.

    The buffer grows with the bytes that arrive (a client that declares a large image and sends nothing costs
    nothing). Raises InputError when the stream is not zlib, inflates past `nbytes`, or ends early; memory stays
    at the bytes inflated so far plus one piece, however large the stream claims to be.
    """

    PIECE = 1 << 24
    """Most bytes inflated in one step (a small compressed chunk may inflate a thousandfold)."""

    def __init__(self, nbytes: int, what: str = "body"):
        self.nbytes = nbytes
        self.buffer = bytearray()
        self.what = what
        self._inflater = zlib.decompressobj()

    @property
    def filled(self) -> int:
        return len(self.buffer)

    def feed(self, chunk: bytes) -> None:
        pending = chunk
        while True:
            room = self.nbytes - self.filled
            # Ask for one byte more than fits, so an oversized stream shows itself without being inflated.
            limit = min(room + 1, self.PIECE)
            try:
                data = self._inflater.decompress(pending, limit)
            except zlib.error as error:
                raise InputError(f"{self.what} is not a valid zlib stream ({error})") from None
            if len(data) > room:
                raise InputError(f"{self.what} inflates to more than the {self.nbytes} bytes its dtype and shape "
                                 "describe")
            self.buffer += data
            pending = self._inflater.unconsumed_tail
            if not pending and len(data) < limit:
                return

    def finish(self) -> bytearray:
        """The inflated bytes, once the stream is complete and exactly filled the buffer."""
        if not self._inflater.eof or self.filled != self.nbytes:
            raise InputError(f"{self.what} is truncated: it inflates to {self.filled} of the {self.nbytes} bytes "
                             "its dtype and shape describe")
        if self._inflater.unused_data:
            raise InputError(f"{self.what} has {len(self._inflater.unused_data)} bytes after the end of its zlib "
                             "stream")
        return self.buffer


def inflate_array(compressed: bytes, dtype: str, shape, what: str) -> np.ndarray:
    """A (shape) array of `dtype` from one zlib blob, in native byte order."""
    wire = wire_dtype(dtype)
    inflater = ExactInflater(math.prod(shape) * wire.itemsize, what)
    inflater.feed(compressed)
    return as_array(inflater.finish(), dtype, shape)


def as_array(raw: bytearray, dtype: str, shape) -> np.ndarray:
    """A view of little-endian wire bytes as a (shape) array in native byte order (a copy only on big-endian hosts)."""
    wire = wire_dtype(dtype)
    return np.frombuffer(raw, dtype=wire).reshape(shape).astype(wire.newbyteorder("="), copy=False)


def deflate_array(array: np.ndarray) -> bytes:
    """zlib of the array's little-endian bytes in C order (dtype and shape travel separately)."""
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return zlib.compress(np.ascontiguousarray(little).tobytes(), COMPRESSION_LEVEL)


def quantize_probability(probability: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] (any float array) → uint8 round(p · 255) of the same shape, the wire's form."""
    return np.rint(np.clip(probability, 0.0, 1.0) * PROBABILITY_SCALE).astype(np.uint8)


def decode_base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None


def require_finite(array: np.ndarray, what: str) -> None:
    """InputError naming the count of voxels that are NaN, infinite or beyond float32 (the model's type)."""
    bad = count_unusable_voxels(array)
    if bad:
        raise InputError(f"{what} has {bad} NaN or infinite voxels, or voxels beyond the float32 range the model "
                         "computes in")
