"""One sweep four ways: packed by trainyard, as ordinary jobs, by Ray Tune, as bare loops.

The same trials (book_cnn on mnist-5k, 4 learning rates x 4 seeds, 10 epochs, fast mode
otherwise) in one run on this machine: packed by trainyard, as 16 ordinary trainyard jobs,
through Ray Tune, and as 16 bare sequential loops.

    python -m bench.sweep                                   # 16 book_cnn trials, 10 epochs
    python -m bench.sweep --model conv_gan --trials 4       # 2 lrs x 2 seeds, 1 epoch
    python -m bench.sweep --trials 2 --epochs 1             # a plumbing check
    python -m bench.sweep --only jobs,bare                  # some rows only

1. packed: one `POST /v1/sweeps` (grid sampler over lr x seed, n_trials = trials, parallel =
   trials) to a local stack with one worker, which trains the trials as packs
   (workers/trainer/pack.py); timed on the client from just before the POST until every
   trial's event stream has ended (push, not polling), all of them `succeeded`.
2. jobs: the same specs as ordinary jobs (`POST /v1/jobs` each, all submitted at once, as a
   script of N submits would) on the same worker; timed the same way.
3. ray: Ray Tune in the bench-only environment .venv-bench (bench/ray_env.sh; Ray is not in
   .venv), run as a subprocess: a function trainable that trains the spec with trainyard's
   `fit(spec, Run.local(...))` and reports its metric, a grid_search over lr x seed,
   TuneConfig(num_samples=1). Resources: `ray.init(num_cpus=<this machine's CPUs>)` and Ray's
   default of 1 CPU per function trial, so as many trials run at once as there are cores, each
   with the threads Ray gives a 1-CPU worker (OMP_NUM_THREADS=1); `--ray-cpus-per-trial`
   changes it. Timed from the subprocess's start (Python, `import ray`, `ray.init`, the trials,
   Ray's shutdown) to its exit.
4. bare: the trials one after another in this process with no per-job work at all: each
   trial's recipe (model, optimiser, step: what fit() trains) stepped in a plain loop as
   bench/bare.py does, then its held-out accuracy (a GAN: the quality score fit() ends with);
   data loaded and warm. No checkpoints, grids, events, monitor or queue.

The stack's worker is warmed first with a short job of the same shape (process, data, the
memory plan; for GANs the reference classifier of the quality score). The ratios are each row's
wall time against the 16 jobs' and against the bare loops' (so the packed figure is not
flattered by the queue's per-job cost). Each row prints the best trial it found."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shared.schemas import ClassifierSpec, GanSpec, JobSpec

if TYPE_CHECKING:
    from trainyard.client import Client

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / ".venv-bench"
RAY_ENV_HINT = "bash bench/ray_env.sh  (or: make bench-sweep), makes .venv-bench with Ray Tune"
ROWS = ("packed", "jobs", "ray", "bare")
Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class ModelPlan:
    """What a model's sweep varies and optimises."""

    lrs: tuple[float, ...]  # a ladder to take consecutive learning rates from
    centre: float  # the ladder is read around this lr (fast mode's)
    epochs: int  # the default epochs of the comparison
    metric: str
    direction: Direction


MODELS = {
    "book_cnn": ModelPlan(
        lrs=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
        centre=1e-2,
        epochs=10,
        metric="test_accuracy",
        direction="maximize",
    ),
    # mnist-5k's GAN is scored by the Fréchet distance in the reference classifier's features.
    "conv_gan": ModelPlan(
        lrs=(1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2),
        centre=2e-3,
        # 1 epoch = 63 steps. A GAN trial's fixed costs (its recipe's clusters, ~5 s here; the
        # final quality score) are most of a short trial's time already, and the warm-ups train
        # the reference classifier twice (the stack's, the bare loops'): more epochs run past
        # the ~5 minutes this comparison is meant to take on 2 CPUs. --epochs raises it.
        epochs=1,
        metric="fd",
        direction="minimize",
    ),
}


@dataclass
class Row:
    """One way of running the trials: its wall time and its trials' metric values."""

    name: str
    wall_s: float | None = None
    values: list[tuple[float, float, int]] = field(default_factory=list)  # (value, lr, seed)
    note: str = ""
    skipped: str | None = None  # why it did not run

    def best(self, direction: Direction) -> tuple[float, float, int] | None:
        pick = max if direction == "maximize" else min
        return pick(self.values, key=lambda v: v[0]) if self.values else None


def grid(trials: int, plan: ModelPlan) -> tuple[list[float], list[int]]:
    """`trials` = (learning rates) x (seeds), the lr side the larger: 16 -> 4 x 4, 4 -> 2 x 2,
    2 -> 2 x 1; consecutive rungs of the model's lr ladder around fast mode's lr."""
    n_lr = next(d for d in range(math.isqrt(trials - 1) + 1, trials + 1) if trials % d == 0)
    if n_lr > len(plan.lrs):
        raise SystemExit(f"at most {len(plan.lrs)} learning rates: {trials} trials are too many")
    centre = plan.lrs.index(plan.centre)
    start = min(max(0, centre - (n_lr - 1) // 2 - (n_lr + 1) % 2), len(plan.lrs) - n_lr)
    return list(plan.lrs[start : start + n_lr]), list(range(trials // n_lr))


def base_spec(
    model: str, epochs: int, max_steps: int | None, batch_size: int | None = None
) -> JobSpec:
    common: dict[str, Any] = {"model": model, "epochs": epochs, "max_steps": max_steps}
    if batch_size:
        common["batch_size"] = batch_size
    return ClassifierSpec(**common) if model == "book_cnn" else GanSpec(**common)


def trial_specs(base: JobSpec, lrs: list[float], seeds: list[int]) -> list[JobSpec]:
    return [base.model_copy(update={"lr": lr, "seed": seed}) for lr in lrs for seed in seeds]


def metric_of(result: dict[str, Any] | None, metric: str) -> float:
    if not result or metric not in result.get("metrics", {}):
        raise RuntimeError(f"no {metric} in the result {result}")
    return float(result["metrics"][metric])


# --- 1 and 2: through a local stack


def follow(api: Client, job_ids: list[str]) -> None:
    """Until each job's event stream has ended (the stream ends when the job does)."""
    for job_id in job_ids:
        for _ in api.events(job_id):
            pass


def collect(api: Client, job_ids: list[str], metric: str, row: Row, posted: float) -> None:
    """Each job's metric into `row`, and in its note when the trials ran (server clocks, from
    `posted`, the epoch time of the first POST) and which of them overlapped: on a worker
    that trains one job at a time, trials that ran at the same time ran as one pack."""
    spans: list[tuple[float, float]] = []
    for job_id in job_ids:
        job = api.get(job_id)
        if job.status.value != "succeeded":
            raise RuntimeError(f"{row.name}: job {job_id} is {job.status.value}: {job.error}")
        row.values.append((metric_of(job.result, metric), job.spec.lr, job.spec.seed))
        if job.started_at and job.finished_at:
            spans.append((job.started_at.timestamp(), job.finished_at.timestamp()))
    if not spans:
        return
    groups: list[list[tuple[float, float]]] = []
    for span in sorted(spans):
        if groups and span[0] < max(end for _, end in groups[-1]):
            groups[-1].append(span)
        else:
            groups.append([span])
    busy = sum(max(e for _, e in g) - min(s for s, _ in g) for g in groups)
    sizes = [len(g) for g in groups]
    took = ", ".join(f"{max(e for _, e in g) - min(s for s, _ in g):.1f}" for g in groups)
    shape = f"{len(groups)} runs of {sizes} trials, {took} s" if max(sizes) > 1 else ""
    row.note = "; ".join(
        part
        for part in (
            row.note,
            f"first trial started {min(s for s, _ in spans) - posted:.2f} s after the POST, "
            f"last ended {max(e for _, e in spans) - posted:.2f} s, "
            f"{busy:.2f} s of it with a trial running",
            f"overlapping (packed): {shape}" if shape else "",
        )
        if part
    )


def run_jobs(api: Client, specs: list[JobSpec], metric: str) -> Row:
    row = Row("jobs")
    posted, began = time.time(), time.perf_counter()
    job_ids = [api.submit(spec).id for spec in specs]
    follow(api, job_ids)
    row.wall_s = time.perf_counter() - began
    collect(api, job_ids, metric, row, posted)
    return row


def sweep_body(base: JobSpec, lrs: list[float], seeds: list[int], plan: ModelPlan) -> dict:
    """The POST /v1/sweeps body (shared/schemas.py SweepSpec), as JSON."""
    return {
        "name": f"bench.sweep {base.model} {len(lrs)}x{len(seeds)}",
        "base": base.model_dump(mode="json", exclude={"lr", "seed"}),
        "space": {
            "lr": {"type": "choice", "values": lrs},
            "seed": {"type": "choice", "values": seeds},
        },
        "n_trials": len(lrs) * len(seeds),
        "sampler": "grid",
        "metric": {"name": plan.metric, "direction": plan.direction},
        "parallel": len(lrs) * len(seeds),
    }


def _sweep_call(api: Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """The sweep routes' JSON through the client's session (and its error handling): plain
    REST, the same before and after the SDK's sweep methods."""
    answer: dict[str, Any] = api._call(method, path, **kwargs)
    return answer


def run_packed(api: Client, body: dict[str, Any], metric: str) -> Row:
    """One POST /v1/sweeps; every trial's job id as the sweep queues it, followed to its end."""
    from trainyard.client import ApiError

    row = Row("packed")
    n = body["n_trials"]
    posted, began = time.time(), time.perf_counter()
    try:
        sweep = _sweep_call(api, "POST", "/v1/sweeps", json=body)
    except ApiError as exc:
        if exc.status_code in (404, 405):
            row.skipped = f"no sweep API in this tree yet (POST /v1/sweeps: {exc})"
            return row
        raise
    followed: list[str] = []
    while len(followed) < n:
        new = [t["job_id"] for t in sweep["trials"] if t.get("job_id")]
        new = [job_id for job_id in new if job_id not in followed]
        if new:
            follow(api, new)
            followed += new
        elif sweep["status"] != "running":
            raise RuntimeError(f"sweep {sweep['id']} is {sweep['status']} after {followed}")
        else:
            time.sleep(0.2)  # trials still waiting to be queued (the sweep's `parallel`)
        sweep = _sweep_call(api, "GET", f"/v1/sweeps/{sweep['id']}")
    row.wall_s = time.perf_counter() - began
    deadline = time.monotonic() + 60  # the driver marks the sweep finished on a later pass
    while sweep["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
        sweep = _sweep_call(api, "GET", f"/v1/sweeps/{sweep['id']}")
    best = sweep.get("best")
    row.note = f"sweep {sweep['id']} {sweep['status']}; its best: " + (
        f"trial {best['trial']} {best['value']:.4f} {best['params']}" if best else "none"
    )
    collect(api, followed, metric, row, posted)
    return row


def run_stack_rows(
    rows: list[str], base: JobSpec, lrs: list[float], seeds: list[int], plan: ModelPlan
) -> list[Row]:
    from bench.stack import local_stack
    from trainyard.client import Client

    specs = trial_specs(base, lrs, seeds)
    done: list[Row] = []
    with local_stack() as stack, Client(stack.config.api_url, stack.config.api_token) as api:
        warm = base.model_copy(update={"epochs": 1, "max_steps": 20, "lr": lrs[0]})
        job = api.wait(api.submit(warm).id, timeout=900)
        assert job.status.value == "succeeded", job.error
        if "packed" in rows:
            done.append(run_packed(api, sweep_body(base, lrs, seeds, plan), plan.metric))
        if "jobs" in rows:
            done.append(run_jobs(api, specs, plan.metric))
    return done


# --- 3: Ray Tune, in its own environment


def ray_python() -> Path | None:
    python = BENCH_VENV / "bin" / "python"
    return python if python.exists() else None


def run_ray(
    base: JobSpec, lrs: list[float], seeds: list[int], plan: ModelPlan, cpus: float, store: Path
) -> Row:
    row = Row("ray")
    python = ray_python()
    if python is None:
        row.skipped = f"no {BENCH_VENV}; make it with: {RAY_ENV_HINT}"
        return row
    work = Path(tempfile.mkdtemp(prefix="trainyard-ray-"))
    config = {
        "base": base.model_dump(mode="json"),
        "lrs": lrs,
        "seeds": seeds,
        "metric": plan.metric,
        "direction": plan.direction,
        "cpus_per_trial": cpus,
        "store": str(store),
        "work": str(work),
    }
    (work / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.pop(name, None)  # as a Ray user starts it: Ray sizes its workers' threads
    log = work / "ray.log"
    try:
        began = time.perf_counter()
        with log.open("w") as out:
            code = subprocess.call(
                [str(python), "-m", "bench.sweep", "--ray-child", str(work / "config.json")],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        row.wall_s = time.perf_counter() - began
        result_file = work / "result.json"
        if code != 0 or not result_file.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise RuntimeError(f"the Ray run exited {code}; the end of its log:\n{tail}")
        result = json.loads(result_file.read_text())
        row.values = [(float(v), float(lr), int(seed)) for v, lr, seed in result["values"]]
        row.note = (
            f"ray {result['ray']}; import {result['import_s']:.1f} s, init "
            f"{result['init_s']:.1f} s, fit {result['fit_s']:.1f} s; {cpus:g} CPU per trial "
            f"of {result['cpus']:g}, torch threads in a trial: {result['threads']}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return row


def ray_child(config_path: str) -> None:
    """In .venv-bench: the trials as a Ray Tune user would run them."""
    began = time.perf_counter()
    import ray
    from ray import tune

    imported = time.perf_counter()
    config = json.loads(Path(config_path).read_text())
    work, store = Path(config["work"]), config["store"]
    metric, cpus = config["metric"], float(config["cpus_per_trial"])
    base_json = config["base"]

    def trainable(params: dict[str, Any]) -> None:
        import torch

        from shared.schemas import JobSpecAdapter
        from workers.trainer.fit import fit
        from workers.trainer.run import Run

        spec = JobSpecAdapter.validate_python(
            {**base_json, "lr": params["lr"], "seed": params["seed"]}
        )
        job_id = f"ray-{params['lr']:g}-{params['seed']}".replace(".", "_").replace("-", "x")
        summary = fit(spec, Run.local(store, job_id))
        tune.report({metric: summary.metrics[metric], "threads": torch.get_num_threads()})

    cpu_count = float(os.cpu_count() or 1)
    ray.init(num_cpus=cpu_count, include_dashboard=False, log_to_driver=True)
    started = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus}),
        param_space={
            "lr": tune.grid_search(config["lrs"]),
            "seed": tune.grid_search(config["seeds"]),
        },
        tune_config=tune.TuneConfig(num_samples=1, metric=metric, mode=config["direction"][:3]),
        run_config=tune.RunConfig(name="bench-sweep", storage_path=str(work / "ray_results")),
    )
    results = tuner.fit()
    fitted = time.perf_counter()
    errors = [str(r.error) for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} Ray trials failed: {errors[0]}")
    values = [(r.metrics[metric], r.config["lr"], r.config["seed"]) for r in results]
    threads = sorted({int(r.metrics["threads"]) for r in results})
    ray.shutdown()
    result = {
        "values": values,
        "ray": ray.__version__,
        "import_s": imported - began,
        "init_s": started - imported,
        "fit_s": fitted - started,
        "cpus": cpu_count,
        "threads": threads,
    }
    (work / "result.json").write_text(json.dumps(result))


# --- 4: bare loops in this process


def bare_trial(spec: JobSpec, store: Path) -> float:
    """One trial with no per-job work: the trial's recipe (its model, optimiser and step, built
    as fit() builds them: manual_seed, then the recipe) stepped over its Batches in a plain
    loop, as bench/bare.py does; then what fit() reports: held-out accuracy, or for a GAN the
    final quality score. Returns the metric."""
    import torch

    from shared.config import get_settings
    from shared.storage import LocalArtifactStore
    from workers.trainer import quality
    from workers.trainer.data import Batches, load_dataset
    from workers.trainer.memory import pick_device
    from workers.trainer.recipes import GanRecipe, make_recipe

    device = pick_device(spec.device)
    torch.manual_seed(spec.seed)
    data = load_dataset(spec.dataset).to(device)  # cached in this process, as in a warm worker
    recipe = make_recipe(spec, data, device)
    batches = Batches(data.train_x, recipe.train_labels, spec.batch_size, spec.seed)
    total = min(spec.epochs * len(batches), spec.max_steps or spec.epochs * len(batches))
    step, epoch = 0, 0
    while step < total:
        for x, y in batches.epoch(epoch):
            losses = recipe.train_step(x, y)
            step += 1
            if step == total:
                break
        epoch += 1
    float(next(iter(losses.values())))  # the last step done (a CUDA sync)
    if not isinstance(recipe, GanRecipe):
        return recipe.evaluate()["test_accuracy"]
    meter = quality.meter_for(
        data,
        recipe.prepare,
        recipe.classes > 0,
        LocalArtifactStore(store),
        get_settings(),
        device,
        spec.seed,
    )
    return meter.score(recipe.generate)[meter.metric]


def run_bare(specs: list[JobSpec], store: Path) -> Row:
    row = Row("bare")
    warm = specs[0].model_copy(update={"epochs": 1, "max_steps": 20})
    bare_trial(warm, store)  # data loaded, kernels warm; a GAN's reference classifier cached
    began = time.perf_counter()
    for spec in specs:
        row.values.append((bare_trial(spec, store), spec.lr, spec.seed))
    row.wall_s = time.perf_counter() - began
    return row


# --- the report


def report(rows: list[Row], plan: ModelPlan, title: str) -> None:
    print(title)
    by_name = {row.name: row for row in rows}

    def ratio(row: Row, name: str) -> str:
        other = by_name.get(name)
        if row.wall_s is None or other is None or other.wall_s is None:
            return "     -"
        return f"{other.wall_s / row.wall_s:6.2f}x"

    print(
        f"  {'':7} {'wall s':>8}  {'jobs/this':>9} {'bare/this':>9}  best {plan.metric} (lr, seed)"
    )
    for row in rows:
        if row.skipped:
            print(f"  {row.name:7} skipped: {row.skipped}")
            continue
        best = row.best(plan.direction)
        found = f"{best[0]:.4f} (lr {best[1]:g}, seed {best[2]})" if best else "-"
        assert row.wall_s is not None
        print(
            f"  {row.name:7} {row.wall_s:8.2f}  {ratio(row, 'jobs'):>9} {ratio(row, 'bare'):>9}  "
            f"{found}"
        )
        if row.note:
            print(f"  {'':7} {row.note}")
    if n := len(next((row.values for row in rows if row.values), [])):
        print(f"  (jobs/this, bare/this: times faster than the {n} jobs / the {n} bare loops)")
    ran = [row for row in rows if row.values]
    if len(ran) > 1:  # the same trials four ways: the same numbers, up to kernel rounding
        per_trial = [{(lr, seed): v for v, lr, seed in row.values} for row in ran]
        gaps = [
            abs(values[trial] - per_trial[0][trial])
            for values in per_trial[1:]
            for trial in per_trial[0]
            if trial in values
        ]
        print(
            f"  each trial's {plan.metric} across {', '.join(r.name for r in ran)}: "
            f"largest difference {max(gaps, default=0.0):.4g}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="book_cnn")
    parser.add_argument("--trials", type=int, default=None, help="16 (book_cnn), 4 (conv_gan)")
    parser.add_argument("--epochs", type=int, default=None, help="10 (book_cnn), 1 (conv_gan)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap each trial's steps")
    parser.add_argument("--batch-size", type=int, default=None, help="default: fast mode's")
    parser.add_argument("--only", default=",".join(ROWS), help="rows to run: " + ",".join(ROWS))
    parser.add_argument("--ray-cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--ray-child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ray_child:
        ray_child(args.ray_child)
        return
    rows = [r.strip() for r in args.only.split(",") if r.strip()]
    if unknown := set(rows) - set(ROWS):
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    plan = MODELS[args.model]
    trials = args.trials or (16 if args.model == "book_cnn" else 4)
    epochs = args.epochs or plan.epochs
    lrs, seeds = grid(trials, plan)
    base = base_spec(args.model, epochs, args.max_steps, args.batch_size)
    specs = trial_specs(base, lrs, seeds)
    steps = f", at most {args.max_steps} steps" if args.max_steps else ""
    title = (
        f"{trials} {args.model} trials on {base.dataset} (lr {lrs} x seed {seeds}), "
        f"{epochs} epochs{steps}, batch {base.batch_size}, fast mode; {os.cpu_count()} CPUs"
    )
    print(title, flush=True)
    done: list[Row] = []
    store = Path(tempfile.mkdtemp(prefix="trainyard-sweep-"))  # bare's and Ray's artifacts
    try:
        if {"packed", "jobs"} & set(rows):
            done += run_stack_rows(rows, base, lrs, seeds, plan)
            _progress(done)
        if "bare" in rows:  # before Ray: a GAN's reference classifier is cached in `store`
            done.append(run_bare(specs, store))
            _progress(done[-1:])
        if "ray" in rows:
            done.append(run_ray(base, lrs, seeds, plan, args.ray_cpus_per_trial, store))
            _progress(done[-1:])
    finally:
        shutil.rmtree(store, ignore_errors=True)
    order = {name: i for i, name in enumerate(ROWS)}
    report(sorted(done, key=lambda r: order[r.name]), plan, title)


def _progress(rows: list[Row]) -> None:
    for row in rows:
        done = f"{row.wall_s:.2f} s" if row.wall_s is not None else f"skipped: {row.skipped}"
        print(f"  {row.name}: {done}", flush=True)


if __name__ == "__main__":
    main()
