"""ParseSlots (shared/uploads/slots.py): the one implementation of the API's parse slots, used
by data set uploads and predict requests."""

from __future__ import annotations

import asyncio

import pytest

from shared.uploads import DatasetError
from shared.uploads.slots import RETRY_AFTER_S, ParseSlots
from tests.conftest import run_async


def test_at_most_count_are_held_and_one_more_is_a_503_after_the_wait() -> None:
    async def main() -> None:
        slots = ParseSlots(2, 0.05, "predict requests", "TRAINYARD_PREDICT_PARSE_CONCURRENCY")
        async with slots.hold(), slots.hold():
            with pytest.raises(DatasetError) as caught:
                async with slots.hold():
                    pytest.fail("a third slot was given")
            assert (caught.value.status, caught.value.retry_after_s) == (503, RETRY_AFTER_S)
            assert "2 predict requests are being read" in str(caught.value)
            assert "TRAINYARD_PREDICT_PARSE_CONCURRENCY" in str(caught.value)
        async with slots.hold(), slots.hold():  # both were given back
            pass

    run_async(main())


def test_a_waiting_request_gets_the_slot_freed_within_the_wait() -> None:
    async def main() -> None:
        slots = ParseSlots(1, 5.0, "uploads", "TRAINYARD_UPLOAD_PARSE_CONCURRENCY")
        order: list[str] = []

        async def first() -> None:
            async with slots.hold():
                order.append("first")
                await asyncio.sleep(0.05)

        async def second() -> None:
            await asyncio.sleep(0.01)
            async with slots.hold():
                order.append("second")

        await asyncio.gather(first(), second())
        assert order == ["first", "second"]

    run_async(main())


def test_a_slot_is_given_back_when_its_block_raises() -> None:
    async def main() -> None:
        slots = ParseSlots(1, 0.01, "uploads", "TRAINYARD_UPLOAD_PARSE_CONCURRENCY")
        with pytest.raises(ValueError):
            async with slots.hold():
                raise ValueError("a bad body")
        async with slots.hold():
            pass

    run_async(main())
