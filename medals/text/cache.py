"""A bounded least-recently-used store of prompt embeddings, so a prompt typed again skips the text tower."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import torch


class EmbeddingCache:
    """At most `capacity` embeddings (1-D tensors) by key; the least recently used one leaves first."""

    def __init__(self, capacity: int = 1024):
        if capacity < 1:
            raise ValueError(f"cache capacity must be at least 1, got {capacity}")
        self.capacity = int(capacity)
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            embedding = self._entries.get(key)
            if embedding is not None:
                self._entries.move_to_end(key)
            return embedding

    def put(self, key: Hashable, embedding: torch.Tensor) -> None:
        with self._lock:
            self._entries[key] = embedding
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
