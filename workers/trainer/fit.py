"""fit(): the training loop. A plain function: no Celery, no Redis; call it from a notebook."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import torch

from shared.schemas import JobSpec, JobSummary
from workers.trainer import checkpoint
from workers.trainer.data import Batches, load_dataset
from workers.trainer.memory import MemoryMeter, pick_device
from workers.trainer.monitor import Monitor
from workers.trainer.recipes import GanTricks, Recipe, make_recipe
from workers.trainer.run import Run


def fit(
    spec: JobSpec,
    run: Run | None = None,
    micro_batch: int | None = None,
    *,
    tricks: GanTricks | None = None,
) -> JobSummary:
    """Train `spec`, writing checkpoints, sample grids and metrics to `run`; resumes from the
    run's latest checkpoint if there is one. `micro_batch` splits each batch (same optimiser
    step, gradients accumulated) when a full batch does not fit in memory. `tricks` replaces
    fast mode's GAN extras (bench/gan_quality.py compares them; jobs never set it)."""
    run = run or Run.local()
    device = pick_device(spec.device)
    meter = MemoryMeter(device)
    torch.manual_seed(spec.seed)
    data = load_dataset(spec.dataset, run.store, run.data_dir).to(device)
    recipe = make_recipe(spec, data, device, micro_batch, tricks)
    batches = Batches(data.train_x, recipe.train_labels, spec.batch_size, spec.seed)
    total = min(spec.epochs * len(batches), spec.max_steps or spec.epochs * len(batches))
    metrics: dict[str, float] = {}
    with run:  # its background writer stops when we leave, however we leave
        monitor = Monitor(spec, recipe, data, run, device)  # may train the reference classifier
        step = _resume(run, recipe, monitor)
        _announce(run, spec, step, len(batches), total, micro_batch)
        images, train_s, window = 0, 0.0, time.perf_counter()
        while step < total:
            epoch, done_in_epoch = divmod(step, len(batches))
            for x, y in batches.epoch(epoch, skip=done_in_epoch):
                with meter.first_step(recipe.state_dict) as measured:  # the step's memory peak
                    losses = _step(run, recipe, x, y)
                step += 1
                monitor.observe(step, run.after_step(step, losses))  # NaN: Diverged at a check
                if measured and total > 1:  # a measurement, not training throughput
                    window = time.perf_counter()
                else:
                    images += len(x)
                if step % spec.log_every == 0 or step == total:
                    train_s += time.perf_counter() - window  # float() below syncs CUDA first
                    monitor.logged(step, epoch, losses)
                    rate = {"images_per_s": images / max(train_s, 1e-9)}
                    run.emit("step", step, epoch, {**losses, **rate, **meter.peak()})
                    window = time.perf_counter()
                if step % spec.checkpoint_every == 0:
                    monitor.check()  # nothing non-finite is ever saved
                    run.checkpoint(step, epoch, _state(recipe, monitor, step, epoch))
                if step % spec.sample_every == 0:
                    monitor.check()
                    train_s += time.perf_counter() - window  # scoring is not training time
                    run.sample(step, epoch, recipe.sample_grid())
                    monitor.score(step, epoch)
                    window = time.perf_counter()
                if run.should_stop(step):  # cancel, shutdown or lost lease
                    if run.stop_reason == "shutdown":
                        monitor.check()  # a shutdown checkpoints this step
                    raise run.stop(step, epoch, partial(_state, recipe, monitor, step, epoch))
                if step == total:
                    break
            train_s += time.perf_counter() - window  # the epoch's steps since the last log
            metrics = recipe.evaluate()
            run.emit("epoch", step, epoch, metrics, flush=True)
            monitor.evaluated(step, epoch, metrics)
            run.evaluated(step, epoch, metrics)  # a sweep may prune here
            window = time.perf_counter()  # evaluation is not training time

        return finish(
            spec, run, recipe, monitor, meter, step, len(batches), train_s, images, metrics
        )


def finish(
    spec: JobSpec,
    run: Run,
    recipe: Recipe,
    monitor: Monitor,
    meter: MemoryMeter,
    step: int,
    per_epoch: int,
    train_s: float,
    images: int,
    metrics: dict[str, float],
) -> JobSummary:
    """The end of a run (fit()'s, or one trial's of a pack): the last checkpoint and grid,
    final/model.pt and best.pt, reports, memory.json and the summary, which it returns.
    `train_s` is training time in seconds, `images` the images trained on in it, `metrics`
    the last evaluation's (evaluated again here if empty)."""
    monitor.check()
    epoch = (step - 1) // per_epoch
    run.checkpoint(step, epoch, _state(recipe, monitor, step, epoch))
    run.sample(step, epoch, recipe.sample_grid())
    monitor.score(step, epoch)
    run.drain()  # every checkpoint and grid written before the final artifacts
    summary = JobSummary(
        job_id=run.job_id,
        task=spec.task,
        model=spec.model,
        dataset=spec.dataset,
        steps=step,
        epochs=epoch + 1,
        wall_s=train_s,
        images_per_s=images / max(train_s, 1e-9),
        metrics={**(metrics or recipe.evaluate()), **monitor.last_scores},
        speed=spec.speed_flags(),
        best=monitor.best,
        quality_note=monitor.quality_note,
        warnings=run.warnings,
        memory=meter.report(run.predicted_peak_bytes),
    )
    _write_results(run, recipe, monitor, summary, meter.summary_text())
    run.emit("memory", step, epoch, meter.peak(), info={"note": summary.memory.note})
    run.flush()
    return summary


def _announce(
    run: Run, spec: JobSpec, step: int, per_epoch: int, total: int, micro_batch: int | None
) -> None:
    """The start log; after a restart, a rewind first: what an earlier attempt logged past
    `step` is superseded from here on (shared/state/events.py)."""
    epoch = step // per_epoch
    if step or run.attempt > 1:
        run.emit("rewind", step, epoch, info={"resumed_from": step})
    info = {
        "total_steps": total,
        "device": str(pick_device(spec.device)),
        "resumed_from": step,
        "micro_batch": micro_batch or spec.batch_size,
        "speed": spec.speed_flags(),  # opt-in amp / channels_last / compile in effect
    }
    run.emit("log", step, epoch, flush=True, info=info)


def _step(run: Run, recipe: Recipe, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    try:
        return recipe.train_step(x, y)
    except torch.OutOfMemoryError:
        run.drain()  # commit what is in flight: the retry resumes from the newest checkpoint
        raise


def _write_results(
    run: Run, recipe: Recipe, monitor: Monitor, summary: JobSummary, cuda_table: str | None
) -> None:
    """final/model.pt and best.pt, reports (confusion matrix), memory.json (+ the CUDA
    table), summary."""
    run.put_model(checkpoint.snapshot(recipe.export()))  # compact: a pack's weights are views
    if (best := monitor.best_model()) is not None:
        run.put_best(best)
    for name, (payload, content_type) in recipe.reports().items():
        run.store.put_bytes(run.objects.report(name), payload, content_type)
    run.put_json(run.objects.memory, summary.memory)
    if cuda_table is not None:
        run.put_text(run.objects.memory_summary, cuda_table)
    run.put_json(run.objects.summary, summary)


def _state(recipe: Recipe, monitor: Monitor, step: int, epoch: int) -> dict[str, Any]:
    """One checkpoint dict (nanoGPT-style): weights, optimisers, the best model so far, where
    we are, RNG."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    state = {**recipe.state_dict(), "monitor": monitor.state_dict()}
    return {**state, "step": step, "epoch": epoch, "rng": rng}


def _resume(run: Run, recipe: Recipe, monitor: Monitor) -> int:
    """Load the newest valid checkpoint into `recipe` and `monitor`; returns the step to
    continue from."""
    found = run.restore()
    if found is None:
        return 0
    _, state = found
    recipe.load_state_dict(state)
    monitor.load_state_dict(state.get("monitor", {}))
    torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    return int(state["step"])
