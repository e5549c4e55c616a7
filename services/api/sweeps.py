"""The API's side of sweeps (docs/sweeps.md): create one, show it, cancel it; the routes in
routes/sweeps.py make one call here.

The driver (shared/sweeps.py) is synchronous (Optuna and its Redis journal are); it runs in a
thread, and queues each trial through the same `submit()` as POST /v1/jobs, on the API's event
loop, so a trial is checked, planned, counted against its owner's queue cap and stored exactly
as a job submitted by hand. A full queue (429) makes the sweep wait: the next pass (the
reconciler's, or a GET) queues more as room appears."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import time
from collections import Counter
from typing import NoReturn

from fastapi.exceptions import RequestValidationError

from services.api.deps import Services
from services.api.errors import ApiProblem
from services.api.submit import check_fits, submit
from shared.auth import Principal
from shared.schemas import JobSpec, SweepBest, SweepPublic, SweepSpec, SweepsPublic, SweepTrial
from shared.state.records import utcnow
from shared.state.sweeps import (
    SweepIdempotencyConflict,
    SweepLimit,
    SweepNotFound,
    SweepRecord,
    SweepRegistry,
    new_sweep_id,
)
from shared.sweeps import (
    GRID_POINTS_PER_TRIAL,
    LOCK_S,
    SweepDriver,
    TrialRefused,
    TrialsWait,
    default_metric,
    fit_points,
    idempotency_key,
    space_problems,
    trial_spec,
    trials_to_run,
)

log = logging.getLogger(__name__)
SUBMIT_TIMEOUT_S = 45.0  # one trial's submit (it may wait PLAN_WAIT_S for a probe)
assert SUBMIT_TIMEOUT_S < LOCK_S, "a submit must end before the sweep's lock does"
DRIVER_THREADS = 4  # advance calls run here, not in the default pool their submits use
CANCEL_RETRY_S = 5.0  # a cancel waits this long for a pass that holds the sweep's lock


class Sweeps:
    """Made once at start (main.py): the registry, the driver, the loop trials are queued on."""

    def __init__(
        self, app: Services, registry: SweepRegistry, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.app, self.registry, self.loop = app, registry, loop
        self.driver = SweepDriver(registry, self._submit_trial, self._cancel_job)
        # An advance waits on a submit coroutine that itself uses asyncio.to_thread: run in
        # the default pool too, advances could take every thread and wait forever.
        self.pool = concurrent.futures.ThreadPoolExecutor(DRIVER_THREADS, "sweep-driver")

    async def _advance(self, sweep_id: str) -> SweepRecord | None:
        return await self.loop.run_in_executor(self.pool, self.driver.advance, sweep_id)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # --- the driver's callbacks (run in its thread)

    def _submit_trial(self, record: SweepRecord, spec: JobSpec, number: int) -> str:
        tags = {"sweep_id": record.id, "trial": number}
        key = idempotency_key(record.id, number)
        call = submit(self.app, spec, record.owner, key, tags)
        future = asyncio.run_coroutine_threadsafe(call, self.loop)
        try:
            job, _ = future.result(SUBMIT_TIMEOUT_S)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()  # its Idempotency-Key finds the job if it was stored meanwhile
            raise TrialsWait(
                f"waiting: queueing trial {number} took over {SUBMIT_TIMEOUT_S:g} s"
            ) from exc
        except ApiProblem as exc:
            if exc.status_code == 429:
                raise TrialsWait(f"waiting for room: {exc.detail}") from exc
            raise TrialRefused(str(exc.detail)) from exc
        except RequestValidationError as exc:
            errors = exc.errors()
            raise TrialRefused(errors[0]["msg"] if errors else "invalid job spec") from exc
        return job.id

    def _cancel_job(self, job_id: str) -> None:
        self.app.registry.request_cancel(job_id)

    # --- what the routes call

    async def create(
        self, spec: SweepSpec, principal: Principal, idem_key: str | None
    ) -> tuple[SweepPublic, bool]:
        """Store the sweep and queue its first trials; (the sweep, whether it is a replay).
        422s name the field at fault (`n_trials`, `space.<name>`, `base.<field>`)."""
        settings = self.app.settings
        if spec.n_trials > settings.SWEEP_MAX_TRIALS:
            _invalid("n_trials", f"at most {settings.SWEEP_MAX_TRIALS} trials per sweep")
        grid_max = GRID_POINTS_PER_TRIAL * settings.SWEEP_MAX_TRIALS
        for field, why in space_problems(spec, grid_max):
            _invalid(field, why)
        try:
            info = await check_fits(spec.base, self.app.catalog, principal.owner)
        except RequestValidationError as exc:
            first = exc.errors()[0]
            _invalid(f"base.{first['loc'][-1]}", first["msg"])
        for point in fit_points(spec):  # a data set or model the space names: as the base
            try:
                await check_fits(trial_spec(spec.base, point), self.app.catalog, principal.owner)
            except RequestValidationError as exc:
                first = exc.errors()[0]
                name = first["loc"][-1] if first["loc"][-1] in point else next(iter(point))
                shown = {k: point[k] for k in sorted(point)}
                _invalid(f"space.{name}", f"the point {shown}: {first['msg']}")
        metric = spec.metric or default_metric(spec.base.task, info.num_classes)
        record = SweepRecord(
            id=new_sweep_id(),
            owner=principal.owner,
            spec=spec,
            metric=metric,
            n_trials=trials_to_run(spec),
            created_at=utcnow(),
        )
        idempotency = None
        if idem_key is not None:
            digest = hashlib.sha256(spec.model_dump_json().encode()).hexdigest()
            idempotency = (idem_key, digest, settings.IDEMPOTENCY_TTL_S)
        try:
            stored = await asyncio.to_thread(
                self.registry.create, record, idempotency, settings.SWEEP_MAX_RUNNING_PER_OWNER
            )
        except SweepLimit as exc:
            raise ApiProblem(429, str(exc), headers={"Retry-After": "60"}) from exc
        except SweepIdempotencyConflict as exc:
            raise ApiProblem(
                409, str(exc), field="Idempotency-Key", code="idempotency_conflict"
            ) from exc
        if stored != record.id:
            return await self.show(stored, principal, advance=False), True
        return await self.show(record.id, principal), False

    async def show(self, sweep_id: str, principal: Principal, advance: bool = True) -> SweepPublic:
        """The sweep, advanced first (so a read sees trials told and queued)."""
        await asyncio.to_thread(self._visible, sweep_id, principal)
        if advance:
            try:
                await self._advance(sweep_id)
            except Exception:  # a read still answers; the reconciler's pass tries again
                log.exception("sweep %s: advance failed", sweep_id)
        return await asyncio.to_thread(self.public, self._visible(sweep_id, principal))

    async def list(self, principal: Principal, limit: int) -> SweepsPublic:
        records = await asyncio.to_thread(self.registry.page, principal, limit)
        data = [await asyncio.to_thread(self.public, r) for r in records]
        return SweepsPublic(data=data, count=len(data))

    async def cancel(self, sweep_id: str, principal: Principal) -> SweepPublic:
        """No more trials; every trial not finished is cancelled (409 once it has ended)."""
        record = await asyncio.to_thread(self._visible, sweep_id, principal)
        if record.cancel_requested or record.finished_at is not None:
            raise ApiProblem(409, f"cannot cancel a sweep that is {record.status}")
        await asyncio.to_thread(self.registry.request_cancel, sweep_id)
        deadline = time.monotonic() + CANCEL_RETRY_S
        while await self._advance(sweep_id) is None:
            if time.monotonic() > deadline:
                break  # the pass holding the lock, or the next one, cancels the trials
            await asyncio.sleep(0.1)
        return await asyncio.to_thread(self.public, self.registry.get(sweep_id))

    def _visible(self, sweep_id: str, principal: Principal) -> SweepRecord:
        try:
            return self.registry.get_for(sweep_id, principal)
        except SweepNotFound as exc:
            raise ApiProblem(404, str(exc)) from exc

    def public(self, record: SweepRecord) -> SweepPublic:
        """The sweep as the API shows it: counts by job status, the best trial, the table."""
        entries = self.registry.trials(record.id)
        states = self.registry.job_states([t.job_id for t in entries if t.job_id])
        trials: list[SweepTrial] = []
        for entry in entries:
            job = states.get(entry.job_id or "")
            status = job.status if job else None
            reason = (job.error if job else None) or entry.reason
            trials.append(
                SweepTrial(
                    number=entry.number,
                    job_id=entry.job_id,
                    status=status,
                    params=entry.params,
                    value=entry.value,
                    reason=reason,
                )
            )
        counts: Counter[str] = Counter(
            t.status.value if t.status else ("waiting" if e.state == "RUNNING" else "failed")
            for t, e in zip(trials, entries, strict=True)
        )
        done = [e for e in entries if e.state == "COMPLETE" and e.value is not None and e.job_id]
        best = None
        if done:
            sign = 1 if record.metric.direction == "maximize" else -1
            top = max(done, key=lambda e: (sign * (e.value or 0.0), -e.number))
            assert top.job_id is not None and top.value is not None
            best = SweepBest(
                trial=top.number, job_id=top.job_id, params=top.params, value=top.value
            )
        return SweepPublic(
            id=record.id,
            owner=record.owner,
            name=record.spec.name,
            status=record.status,
            spec=record.spec,
            metric=record.metric,
            created_at=record.created_at,
            finished_at=record.finished_at,
            cancel_requested=record.cancel_requested,
            n_trials=record.n_trials,
            asked=record.asked,
            counts=dict(counts),
            waiting=record.waiting,
            best=best,
            trials=trials,
        )


def _invalid(field: str, why: str) -> NoReturn:
    """A 422 naming `field` (e.g. space.lr): the error handler reads it from ctx."""
    raise RequestValidationError(
        [
            {
                "type": "sweep_invalid",
                "msg": why,
                "loc": ("body", *field.split(".")),
                "ctx": {"field": field},
            }
        ]
    )
