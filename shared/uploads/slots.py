"""ParseSlots: at most N untrusted bodies read and decoded at once in one process.

The one implementation of the API's parse slots: data set uploads (DatasetCatalog,
UPLOAD_PARSE_CONCURRENCY) and predict inputs (services/api/inference.py,
PREDICT_PARSE_CONCURRENCY) each hold one of their own pool from before the body is read until
what was decoded from it is stored, so requests held open by slow (or hostile) clients hold at
most N bodies, and N times the decoded budget, in memory. A request that finds no slot free
within `wait_s` is a DatasetError 503 with `retry_after_s`, nothing of its body read."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from shared.uploads.core import DatasetError

RETRY_AFTER_S = 5


class ParseSlots:
    """`count` slots of one process; `what` ("uploads") and `setting` (the environment
    variable that sets `count`) word the 503."""

    def __init__(self, count: int, wait_s: float, what: str, setting: str) -> None:
        self.count, self.wait_s, self.what, self.setting = count, wait_s, what, setting
        self._free = asyncio.Semaphore(count)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold one slot for the block; DatasetError(503, retry_after_s=RETRY_AFTER_S) when
        none frees up within `wait_s` seconds."""
        try:
            await asyncio.wait_for(self._free.acquire(), timeout=self.wait_s)
        except TimeoutError:
            raise DatasetError(
                503,
                f"{self.count} {self.what} are being read and parsed already "
                f"({self.setting}); retry in a few seconds",
                retry_after_s=RETRY_AFTER_S,
            ) from None
        try:
            yield
        finally:
            self._free.release()
