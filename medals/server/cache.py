"""The server's image cache: uploaded volumes by content id, least recently used first out, bounded in bytes."""
from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .errors import CacheBusy, ImageNotFound, PayloadTooLarge


@dataclass(frozen=True)
class CachedImage:
    """One uploaded volume: voxels in (k, j, i) order, their spacing in mm in the same order, and the ITK direction
    matrix (nine numbers, row-major) when the client sent it."""

    image_id: str
    array: np.ndarray
    spacing: tuple[float, float, float]
    direction: tuple[float, ...] | None = None

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def describe(self) -> dict:
        return {"image_id": self.image_id, "dtype": self.array.dtype.name, "shape": list(self.array.shape),
                "spacing": list(self.spacing),
                "direction": None if self.direction is None else list(self.direction), "nbytes": self.nbytes}


class ImageCache:
    """Least-recently-used images whose voxel bytes, together with the uploads still arriving, add up to at most
    `max_bytes`.

    An upload reserves its image's bytes before its body is read (`reservation`), evicting older images to make
    room, so cached and arriving images never hold more than the budget. Eviction only drops the cache's
    reference: a job that already holds an image keeps it until it ends.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._images: OrderedDict[str, CachedImage] = OrderedDict()
        self._bytes = 0
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def check_fits(self, nbytes: int) -> None:
        """PayloadTooLarge when one image of `nbytes` could never be held, before anything is read."""
        if nbytes > self.max_bytes:
            raise PayloadTooLarge(f"the image needs {nbytes} bytes but this server's image cache holds at most "
                                  f"{self.max_bytes}; ask its operator for a larger --cache-mb")

    @contextmanager
    def reservation(self, nbytes: int):
        """Hold `nbytes` of the budget while an image of that size arrives; yields `put` for the arrived image,
        which takes over the reserved bytes.

        CacheBusy (503) when uploads in progress already hold the budget: the server never takes more memory for
        images than it was given, however many clients start uploads at once.
        """
        self.check_fits(nbytes)
        with self._lock:
            if self._reserved + nbytes > self.max_bytes:
                raise CacheBusy(f"uploads in progress already hold {self._reserved} of this server's {self.max_bytes} "
                                f"image bytes; try again when they finished")
            self._reserved += nbytes
            self._evict(self.max_bytes - self._reserved)
        held = nbytes

        def put(image: CachedImage) -> None:
            nonlocal held
            with self._lock:
                self._reserved, held = self._reserved - held, 0
                self._put(image)

        try:
            yield put
        finally:
            with self._lock:
                self._reserved -= held

    def put(self, image: CachedImage) -> None:
        self.check_fits(image.nbytes)
        with self._lock:
            self._put(image)

    def _put(self, image: CachedImage) -> None:
        """Under the lock: add (or refresh) `image`, evicting what the budget left by reservations cannot hold."""
        if image.image_id in self._images:
            self._images.move_to_end(image.image_id)
            return
        self._evict(self.max_bytes - self._reserved - image.nbytes)
        self._images[image.image_id] = image
        self._bytes += image.nbytes

    def _evict(self, room: int) -> None:
        """Under the lock: drop least recently used images until the cached ones take at most `room` bytes."""
        while self._images and self._bytes > room:
            _, evicted = self._images.popitem(last=False)
            self._bytes -= evicted.nbytes

    def get(self, image_id: str) -> CachedImage:
        """The image, now the most recently used; ImageNotFound (404) when absent, so the client re-uploads."""
        with self._lock:
            image = self._images.get(image_id)
            if image is None:
                raise ImageNotFound(f"image {image_id} is not on this server (never uploaded, or evicted from its "
                                    "cache); upload it again")
            self._images.move_to_end(image_id)
            return image

    def __contains__(self, image_id: str) -> bool:
        with self._lock:
            return image_id in self._images

    def __len__(self) -> int:
        return len(self._images)
