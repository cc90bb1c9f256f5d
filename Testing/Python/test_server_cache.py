"""The image cache: bounded in bytes, least recently used out, clear 404 for an evicted id."""
from __future__ import annotations

import numpy as np
import pytest

from medals.server.cache import CachedImage, ImageCache
from medals.server.errors import CacheBusy, ImageNotFound, PayloadTooLarge


def image(name: str, nbytes: int) -> CachedImage:
    return CachedImage(name, np.zeros((1, 1, nbytes), np.uint8), (1.0, 1.0, 1.0))


def test_cache_evicts_the_least_recently_used_image_when_full():
    cache = ImageCache(max_bytes=300)
    cache.put(image("a", 100))
    cache.put(image("b", 100))
    cache.put(image("c", 100))
    cache.get("a")  # a is now the most recently used
    cache.put(image("d", 100))
    assert [name for name in "abcd" if name in cache] == ["a", "c", "d"]


def test_cache_never_holds_more_bytes_than_its_bound():
    cache = ImageCache(max_bytes=250)
    for index in range(10):
        cache.put(image(str(index), 60 + index))
        assert cache.nbytes <= 250


def test_cache_answers_an_evicted_id_with_image_not_found():
    cache = ImageCache(max_bytes=100)
    cache.put(image("a", 100))
    cache.put(image("b", 100))
    with pytest.raises(ImageNotFound, match="upload it again"):
        cache.get("a")


def test_cache_refuses_an_image_larger_than_the_whole_cache():
    with pytest.raises(PayloadTooLarge, match="holds at most 100"):
        ImageCache(max_bytes=100).put(image("a", 101))


def test_cache_stores_a_repeated_upload_once():
    cache = ImageCache(max_bytes=1000)
    cache.put(image("a", 100))
    cache.put(image("a", 100))
    assert (len(cache), cache.nbytes) == (1, 100)


def test_a_reservation_evicts_to_make_room_and_its_put_takes_over_the_bytes():
    cache = ImageCache(max_bytes=300)
    cache.put(image("a", 100))
    cache.put(image("b", 100))
    with cache.reservation(150) as put:
        assert "a" not in cache and "b" in cache  # cached + reserved stay within the budget
        put(image("c", 150))
    cache.put(image("d", 50))
    assert "b" in cache and "c" in cache and "d" in cache and cache.nbytes == 300


def test_uploads_in_progress_cannot_reserve_more_than_the_budget():
    cache = ImageCache(max_bytes=300)
    with cache.reservation(200):
        with pytest.raises(CacheBusy, match="uploads in progress already hold 200"):
            with cache.reservation(200):
                pass
    with cache.reservation(300):  # released when the first upload ended, even without a put
        pass
