"""ModelCache: the models an inference worker keeps loaded, bounded by their bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from torch import nn

T = TypeVar("T")


def module_bytes(module: nn.Module) -> int:
    """What a loaded model holds: its parameters' and buffers' bytes."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


class ModelCache(Generic[T]):
    """Least recently used entries, at most `max_bytes` in all (each entry's size is given
    by its loader). An entry larger than the whole budget is loaded and used, not kept.
    Thread-safe; a model is loaded outside the lock (two threads may load the same one at
    once: both get a model, one is kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[T, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def keys(self) -> list[Hashable]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, key: Hashable, load: Callable[[], tuple[T, int]]) -> T:
        """The entry of `key`, loaded with `load` (returning the value and its bytes) when it
        is not cached; either way it becomes the most recently used."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found[0]
            self.misses += 1
        value, size = load()
        self.put(key, value, size)
        return value

    def put(self, key: Hashable, value: T, size: int) -> None:
        """Keep `value` as the most recently used, evicting the least recently used entries
        until all fit; a value over the whole budget is not kept."""
        with self._lock:
            self._entries.pop(key, None)
            if size > self.max_bytes:
                return
            total = sum(s for _, s in self._entries.values())
            while self._entries and total + size > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                total -= evicted
            self._entries[key] = (value, size)
