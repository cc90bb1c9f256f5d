"""The server's image cache: uploaded volumes by content id, least recently used first out, bounded in bytes."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .errors import ImageNotFound, PayloadTooLarge


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
    """Least-recently-used images whose voxel bytes add up to at most `max_bytes`.

    Eviction only drops the cache's reference: a job that already holds an image keeps it until it ends.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._images: OrderedDict[str, CachedImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def check_fits(self, nbytes: int) -> None:
        """PayloadTooLarge when one image of `nbytes` could never be held, before anything is read."""
        if nbytes > self.max_bytes:
            raise PayloadTooLarge(f"the image needs {nbytes} bytes but this server's image cache holds at most "
                                  f"{self.max_bytes}; ask its operator for a larger --cache-mb")

    def put(self, image: CachedImage) -> None:
        self.check_fits(image.nbytes)
        with self._lock:
            if image.image_id in self._images:
                self._images.move_to_end(image.image_id)
                return
            while self._bytes + image.nbytes > self.max_bytes:
                _, evicted = self._images.popitem(last=False)
                self._bytes -= evicted.nbytes
            self._images[image.image_id] = image
            self._bytes += image.nbytes

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
