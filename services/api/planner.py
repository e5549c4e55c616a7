"""The API's side of memory planning: at submit time, find the probe of a job's model and data
shape or ask a planner worker for it, and wait for it a little (shared/planning.py has the
prediction, the memory classes and the settling of jobs that waited).

A submit waits at most PLAN_WAIT_S for a probe; not at all when other probes already wait for
a planner slot, and PICKUP_S when no planner worker has started it (it cannot end in time). A
job whose probe takes longer is stored `queued` without a queue message, on the plan key's
waiting set; the planner worker calls settle() when its probe ends, which routes each waiting
job (or fails it with the 422's message). The reconciler settles any job left waiting
(reconcile()), so a job is never stranded by a process that died."""

from __future__ import annotations

import asyncio
import time

from shared.planning import (
    PLAN_TASK,
    NoClassFits,
    Planner,
    PlanShape,
    ProbeRateLimited,
    ProbeResult,
    Routing,
    Shape,
    choose_class,
    plan_queue,
    plan_shape,
)
from shared.schemas import JobSpec


class ApiPlanner(Planner):
    """Planner plus what only the API does: aplan() at submit time, reconcile() for the
    reconciler."""

    POLL_S = 0.05  # how often a submit looks for its probe while it waits
    PICKUP_S = 0.25  # a free planner slot starts a probe well within this

    async def acached(self, key: str) -> ProbeResult | None:
        """cached() on the asyncio client."""
        if key in self._parsed:
            return self._parsed[key]
        raw = await self.cache.aget(key)
        return None if raw is None else self._remember(key, raw)

    def check_possible(self, spec: JobSpec) -> None:
        """NoClassFits for what needs no probe: no configured class serves the spec's device."""
        klass, why = choose_class(
            self.classes, set(), spec.device, 0, 0, self.settings.MEMORY_HEADROOM
        )
        if klass is None:
            raise NoClassFits("device", why)

    async def aplan(self, spec: JobSpec, image: Shape, num_classes: int, owner: str) -> Routing:
        """Route `spec` (on data of `image`, `num_classes` labels) now if its probe is cached
        or arrives within PLAN_WAIT_S; otherwise a Routing with `planning` set (see the
        class). NoClassFits, before any probe, when no class can run it; ProbeRateLimited
        when `owner` asked for too many new probes."""
        self.check_possible(spec)
        if self.settings.PLAN_TIMEOUT_S <= 0:  # planning off: run unplanned
            return self.route_with(spec, None, set())
        shape = plan_shape(spec, image, num_classes)
        found = await self.acached(shape.key)
        if found is None:
            queued_behind = await self._arequest(shape, owner)
            budget = 0.0 if queued_behind else self.settings.PLAN_WAIT_S
            found = await self._await(shape.key, budget)
        if found is None:
            return Routing(
                memory_class=None, queue=None, reason="being planned", planning=shape.key
            )
        return self.route_with(spec, found, {w.memory_class for w in await self.workers.aonline()})

    async def _arequest(self, shape: PlanShape, owner: str) -> bool:
        """Ask a planner worker for the probe, unless one is already on it; counts against
        the owner's PLAN_PROBES_PER_MINUTE (in Redis: shared by every API replica). True
        when other probes wait for a planner slot before it (it cannot end in time)."""
        ttl = max(1, int(self.settings.PLAN_TIMEOUT_S))
        if not await self.cache.aclaim(shape.key, owner, ttl):
            return False  # being probed: wait for that one
        count, left = await self.cache.acount_request(owner)
        if count > self.settings.PLAN_PROBES_PER_MINUTE:
            await self.cache.arelease(shape.key)
            raise ProbeRateLimited(owner, self.settings.PLAN_PROBES_PER_MINUTE, left)
        args = [shape.key, shape.spec.model_dump(mode="json"), list(shape.image), shape.classes]
        queue = plan_queue(self.settings.QUEUE)
        ahead = await self.cache.abacklog(queue)
        await asyncio.to_thread(self.celery.send_task, PLAN_TASK, args=args, queue=queue)
        return bool(ahead)

    async def _await(self, key: str, budget_s: float) -> ProbeResult | None:
        """The probe if it ends within `budget_s`; None sooner when no planner worker has
        started it after PICKUP_S: every slot is busy, so it cannot end in time."""
        started = time.monotonic()
        while (found := await self.acached(key)) is None:
            waited = time.monotonic() - started
            if waited >= budget_s:
                return None
            if waited >= self.PICKUP_S and not await self.cache.ais_probing(key):
                return None
            await asyncio.sleep(min(self.POLL_S, budget_s - waited))
        return found

    async def add_waiting(self, key: str, job_id: str) -> None:
        """Put `job_id` on `key`'s waiting set: call before the job is stored, so the
        planner worker that ends the probe routes it (settle())."""
        await self.cache.add_waiting(key, job_id, max(60, int(self.settings.PLAN_TIMEOUT_S) + 60))

    async def asettle_if_probed(self, key: str, job_id: str) -> bool:
        """After the job is stored: if the probe ended meanwhile (its planner may have looked
        at the waiting set before the job existed), settle the job here. True if settled."""
        found = await self.acached(key)
        if found is None:
            return False
        return await asyncio.to_thread(self.settle_job, job_id, key, found) is not None

    def reconcile(self, job_id: str, key: str, waited_s: float) -> str | None:
        """The reconciler's pass over a job still waiting for its probe: settle it if the probe
        is cached (the process that should have routed it died), or route it unplanned past
        PLAN_TIMEOUT_S (the planner died, or is far behind)."""
        found = self.cached(key)
        if found is not None:
            return self.settle_job(job_id, key, found)
        if waited_s > self.settings.PLAN_TIMEOUT_S:
            limit = self.settings.PLAN_TIMEOUT_S
            why = f"memory not predicted: no planner answered within {limit:g} s"
            return self.settle_job(job_id, key, None, unplanned=why)
        return None
