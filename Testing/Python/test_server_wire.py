"""The wire format: zlib-compressed little-endian arrays, bounded inflation, content ids."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from medals.errors import InputError
from medals.server import wire


def test_deflate_then_inflate_returns_the_same_array():
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 7
    assert np.array_equal(wire.inflate_array(wire.deflate_array(array), "int16", (2, 3, 4), "labels"), array)


def test_deflate_writes_little_endian_bytes_whatever_the_input_byte_order():
    big_endian = np.array([1, 258], dtype=">u2")
    assert zlib.decompress(wire.deflate_array(big_endian)) == b"\x01\x00\x02\x01"


def test_probabilities_are_quantized_to_the_nearest_255th_and_clipped_to_0_1():
    probability = np.array([0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 0.5, 1.0, -0.2, 1.3], np.float32)
    assert wire.quantize_probability(probability).tolist() == [0, 0, 1, 128, 255, 0, 255]


def test_inflate_rejects_a_stream_that_inflates_past_its_shape():
    blob = zlib.compress(bytes(100))
    with pytest.raises(InputError, match="inflates to more than the 64 bytes"):
        wire.inflate_array(blob, "uint8", (4, 4, 4), "mask")


def test_inflate_rejects_a_truncated_stream():
    blob = zlib.compress(np.ones(1000, np.float32).tobytes())
    with pytest.raises(InputError, match="truncated"):
        wire.inflate_array(blob[: len(blob) // 2], "float32", (10, 10, 10), "image")


def test_inflate_rejects_a_stream_too_short_for_its_shape():
    with pytest.raises(InputError, match="inflates to 8 of the 16 bytes"):
        wire.inflate_array(zlib.compress(bytes(8)), "int16", (2, 2, 2), "image")


def test_inflate_rejects_bytes_that_are_not_zlib():
    with pytest.raises(InputError, match="not a valid zlib stream"):
        wire.inflate_array(b"plain bytes, not compressed", "uint8", (1, 1, 27), "image")


def test_inflate_rejects_trailing_bytes_after_the_stream():
    with pytest.raises(InputError, match="after the end of its zlib stream"):
        wire.inflate_array(zlib.compress(bytes(8)) + b"extra", "uint8", (2, 2, 2), "image")


def test_inflater_memory_is_bounded_by_the_declared_size_for_a_zlib_bomb():
    bomb = zlib.compress(bytes(50_000_000), 9)  # 50 MB of zeros in about 50 kB
    inflater = wire.ExactInflater(1000, "image")
    with pytest.raises(InputError, match="inflates to more than"):
        for start in range(0, len(bomb), 4096):
            inflater.feed(bomb[start:start + 4096])
    assert len(inflater.buffer) <= 1000


def test_inflater_accepts_a_stream_fed_in_small_chunks():
    raw = np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes()
    blob = zlib.compress(raw)
    inflater = wire.ExactInflater(len(raw))
    for start in range(0, len(blob), 7):
        inflater.feed(blob[start:start + 7])
    assert bytes(inflater.finish()) == raw


def test_wire_dtype_rejects_types_outside_the_list():
    with pytest.raises(InputError, match="dtype 'complex64' is not accepted"):
        wire.wire_dtype("complex64")


@pytest.mark.parametrize("text", ["1,2", "1,2,3,4", "0,5,5", "a,b,c", ""])
def test_parse_shape_rejects_anything_but_three_positive_integers(text):
    with pytest.raises(InputError, match="shape"):
        wire.parse_shape(text)


@pytest.mark.parametrize("text", ["1,1", "1,-1,1", "nan,1,1", "inf,1,1", "0,1,1", "x,1,1"])
def test_parse_spacing_rejects_anything_but_three_finite_positive_numbers(text):
    with pytest.raises(InputError, match="spacing"):
        wire.parse_spacing(text)


def test_parse_spacing_keeps_k_j_i_order():
    assert wire.parse_spacing("2.5,0.8,0.7") == (2.5, 0.8, 0.7)


def test_image_id_changes_with_spacing_even_for_the_same_voxels():
    raw = bytes(8)
    assert wire.image_id("uint8", (2, 2, 2), (1, 1, 1), raw) != wire.image_id("uint8", (2, 2, 2), (1, 1, 2), raw)


def test_image_id_is_the_sha256_of_the_header_line_and_raw_bytes():
    import hashlib
    expected = hashlib.sha256(b"int16|1,1,2|2.0,1.0,0.5\n" + bytes(4)).hexdigest()
    assert wire.image_id("int16", (1, 1, 2), (2, 1, 0.5), bytes(4)) == expected
    with_direction = hashlib.sha256(b"int16|1,1,2|2.0,1.0,0.5|-1.0,0.0,0.0,0.0,-1.0,0.0,0.0,0.0,1.0\n" + bytes(4))
    assert wire.image_id("int16", (1, 1, 2), (2, 1, 0.5), bytes(4), (-1, 0, 0, 0, -1, 0, 0, 0, 1)) == \
        with_direction.hexdigest()


def test_a_direction_is_nine_numbers_of_an_invertible_matrix():
    assert wire.parse_direction(None) is None
    assert wire.parse_direction("1,0,0,0,0,-1,0,1,0") == (1, 0, 0, 0, 0, -1, 0, 1, 0)
    for text in ("1,0,0", "1,0,0,0,1,0,0,0,x", "1,0,0,0,0,0,0,0,1", "nan,0,0,0,1,0,0,0,1"):
        with pytest.raises(InputError):
            wire.parse_direction(text)


def test_require_finite_counts_nan_and_infinite_voxels():
    array = np.zeros((2, 2, 2), np.float32)
    array[0, 0, 0], array[1, 1, 1] = np.nan, np.inf
    with pytest.raises(InputError, match="image has 2 NaN or infinite voxels"):
        wire.require_finite(array, "image")


def test_require_finite_accepts_integer_images():
    wire.require_finite(np.zeros((2, 2, 2), np.int16), "image")
