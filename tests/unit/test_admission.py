"""Admission control, per-key rate limits and the cancellation scope (pure asyncio, no engine)."""

from __future__ import annotations

import asyncio

import pytest

from server.admission import AdmissionControl, RateLimiter
from server.cancellation import CancelScope
from server.errors import APIError


def run(coro):
    return asyncio.run(coro)


def test_admits_up_to_max_running_then_queues_then_429():
    async def scenario():
        admission = AdmissionControl(max_running=2, max_waiting=1, retry_after_seconds=3)
        a, b = await admission.acquire(), await admission.acquire()
        third = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        assert (admission.running, admission.waiting) == (2, 1) and not third.done()
        with pytest.raises(APIError) as err:
            await admission.acquire()
        assert err.value.status == 429 and err.value.headers == {"Retry-After": "3"}
        a.release()
        c = await third  # the freed slot went to the one waiting
        assert (admission.running, admission.waiting) == (2, 0)
        b.release()
        c.release()
        c.release()  # idempotent
        assert admission.running == 0

    run(scenario())


def test_waiters_are_served_first_come_first_served():
    async def scenario():
        admission = AdmissionControl(max_running=1, max_waiting=5)
        held = await admission.acquire()
        order: list[int] = []

        async def wait(i):
            slot = await admission.acquire()
            order.append(i)
            slot.release()

        tasks = [asyncio.ensure_future(wait(i)) for i in range(4)]
        await asyncio.sleep(0)
        held.release()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3] and admission.running == 0

    run(scenario())


def test_a_cancelled_waiter_leaves_the_line_and_loses_no_slot():
    async def scenario():
        admission = AdmissionControl(max_running=1, max_waiting=2)
        held = await admission.acquire()
        gone = asyncio.ensure_future(admission.acquire())
        staying = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert admission.waiting == 1
        held.release()
        (await staying).release()
        assert (admission.running, admission.waiting) == (0, 0)

        # Granted and cancelled in the same instant: the slot is passed on, not leaked.
        held = await admission.acquire()
        racer = asyncio.ensure_future(admission.acquire())
        await asyncio.sleep(0)
        held.release()
        racer.cancel()
        await asyncio.gather(racer, return_exceptions=True)
        assert admission.running == 0

    run(scenario())


def test_unlimited_admission_never_queues():
    async def scenario():
        admission = AdmissionControl(max_running=None, max_waiting=0)
        slots = [await admission.acquire() for _ in range(1000)]
        assert admission.running == 1000 and admission.waiting == 0
        for s in slots:
            s.release()

    run(scenario())


def test_rate_limiter_token_bucket_per_key():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    limiter.check("key:a")
    limiter.check("key:a")
    with pytest.raises(APIError) as err:
        limiter.check("key:a")
    assert err.value.status == 429 and err.value.code == "rate_limit_exceeded"
    assert err.value.headers == {"Retry-After": "1"}
    assert "key:a" not in err.value.message  # the key is never echoed
    limiter.check("key:b")  # other keys have their own bucket
    now[0] += 1.0  # one token a second comes back
    limiter.check("key:a")
    with pytest.raises(APIError):
        limiter.check("key:a")


def test_rate_limiter_table_is_bounded():
    limiter = RateLimiter(per_minute=1, max_clients=10)
    for i in range(100):
        limiter.check(f"addr:{i}")
    assert len(limiter._buckets) == 10


def test_cancel_scope_cancels_running_work_and_reports_none():
    async def scenario():
        scope = CancelScope()
        cancelled = asyncio.Event()

        async def work():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        asyncio.get_running_loop().call_later(0.05, scope.cancel, "client disconnected")
        assert await scope.run(work()) is None
        assert cancelled.is_set() and scope.reason == "client disconnected"
        # Later rounds of a multi-round driver do not start at all.
        assert await scope.run(asyncio.sleep(0, result=1)) is None

    run(scenario())


def test_cancel_scope_returns_results_and_errors():
    async def scenario():
        scope = CancelScope()
        assert await scope.run(asyncio.sleep(0, result=7)) == 7

        async def fails():
            raise ValueError("boom")

        with pytest.raises(ValueError):
            await scope.run(fails())

    run(scenario())
