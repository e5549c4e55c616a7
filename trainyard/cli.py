"""`trainyard`: submit, follow and fetch training jobs from a terminal.

The API URL and token come from --url/--token, TRAINYARD_API_URL/TRAINYARD_API_TOKEN, or
.trainyard/stack.env (written by `make up`). Errors are one line on stderr with a non-zero
exit status; `watch` exits with the job's outcome (0 succeeded, 1 failed, 2 cancelled, 3 pruned
by its sweep)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from argparse import BooleanOptionalAction
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table

from shared.schemas import (
    SPEED_FLAGS,
    ClassifierSpec,
    EventKind,
    HealthWarning,
    JobPublic,
    SweepPublic,
)
from shared.status import JobStatus
from trainyard.client import ApiError, Client

EXIT = {JobStatus.SUCCEEDED: 0, JobStatus.FAILED: 1, JobStatus.CANCELLED: 2, JobStatus.PRUNED: 3}
out = Console()
err = Console(stderr=True)
# A GAN's quality scores beside its fd/fid: on their own `quality` line (_quality), not in
# the one-line result.
QUALITY_DETAILS = frozenset(
    {"fd_floor", "confident", "confident_real", "class_entropy", "label_agreement"}
)


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    if args.spec:
        spec: dict[str, Any] = json.loads(Path(args.spec).read_text())
    else:
        spec = {"task": args.task}
    flags = {
        "model": args.model,
        "dataset": args.dataset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "mode": args.mode,
        "max_steps": args.max_steps,
        "name": args.name,
        "seed": args.seed,
        "resize": args.resize,
        "device": args.device,
        **{flag: getattr(args, flag) for flag in SPEED_FLAGS},
    }
    spec.update({k: v for k, v in flags.items() if v is not None})
    return spec


def cmd_submit(api: Client, args: argparse.Namespace) -> int:
    job = api.submit(_spec(args), idempotency_key=args.idempotency_key)
    out.print(
        f"submitted [bold]{job.id}[/bold] ({job.spec.task} {job.spec.model} on "
        f"{job.spec.dataset}, {job.spec.mode} mode)"
    )
    if job.being_planned and job.pending:
        out.print(f"  pending   {job.pending.reason}")
    return cmd_watch(api, argparse.Namespace(job_id=job.id)) if args.watch else 0


def cmd_jobs(api: Client, args: argparse.Namespace) -> int:
    jobs = (
        list(api.iter_jobs(args.status, args.task))
        if args.all
        else api.list_jobs(args.limit, status=args.status, task=args.task).data
    )
    table = Table("status", "task", "model", "dataset", "progress", "result", "created")
    table.columns.insert(0, Column("id", no_wrap=True, min_width=16))
    for job in jobs:
        table.add_row(
            job.id,
            " ".join([_status(job), *(_badge(w.code) for w in job.warnings)]),
            job.spec.task,
            job.spec.model,
            job.spec.dataset,
            f"{job.step}/{job.total_steps or '?'}",
            _result(job),
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)
    return 0


def cmd_show(api: Client, args: argparse.Namespace) -> int:
    job = api.get(args.job_id)
    if args.json:
        out.print_json(job.model_dump_json())
        return 0
    out.print(f"[bold]{job.id}[/bold]  {_status(job)}  owner {job.owner}")
    out.print(f"  spec      {json.dumps(job.spec.model_dump(mode='json', exclude_none=True))}")
    out.print(
        f"  progress  step {job.step}/{job.total_steps or '?'}, epoch {job.epoch + 1}, "
        f"attempts {job.attempts}, requeues {job.requeues}"
    )
    if job.pending:
        eta = f", ETA {job.pending.eta_s:.0f} s" if job.pending.eta_s is not None else ""
        out.print(f"  pending   {job.pending.reason}{eta}")
    if job.micro_batch_size:
        out.print(f"  memory    micro-batch {job.micro_batch_size} (after an out-of-memory)")
    if job.result:
        out.print(f"  result    {_result(job)}; {job.result['images_per_s']:,.0f} images/s")
        if _has_quality(job.result["metrics"]):
            out.print(f"  quality   {_quality(job.result['metrics'])}", highlight=False)
        if job.result.get("quality_note"):
            out.print(f"  quality   not measured: {escape(job.result['quality_note'])}")
        if best := job.result.get("best"):
            out.print(
                f"  best      step {best['step']}, {best['metric']} {best['value']:.4g} "
                f"({best['path']})",
                highlight=False,
            )
        out.print(f"  memory    {_memory(job.result['memory'])}")
    for warning in job.warnings:
        out.print(f"  warning   {_warning(warning)}")
    if job.error:
        out.print(f"  [red]error     {job.error}[/red]")
    return 0


def cmd_watch(api: Client, args: argparse.Namespace) -> int:
    """A live progress bar fed by the job's SSE stream; exits with the job's outcome."""
    job = api.get(args.job_id)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=out) as bar:
        task = bar.add_task(job.status.value, total=job.total_steps, completed=job.step, stats="")
        stats: dict[str, str] = {}
        for event in api.events(job.id):
            if event.kind == "log" and "total_steps" in event.info:
                bar.update(task, total=event.info["total_steps"], completed=event.step)
            elif event.kind == "step":
                m = event.metrics
                loss = m.get("loss", m.get("g_loss"))
                if loss is not None:
                    stats["loss"] = f"loss {loss:.4f}"
                stats["rate"] = f"{m.get('images_per_s', 0):,.0f} img/s"
                bar.update(task, completed=event.step, description="running")
            elif event.kind == "epoch" and "test_accuracy" in event.metrics:
                stats["acc"] = f"acc {event.metrics['test_accuracy']:.4f}"
            elif event.kind == "quality":  # printed above the bar as they come
                best = f"; best step {event.info['best_step']}" if "best_step" in event.info else ""
                out.print(
                    f"  quality   step {event.step}: {_quality(event.metrics)}{best}",
                    highlight=False,
                )
                metric = event.info.get("metric", "fd")
                if metric in event.metrics:
                    stats["quality"] = f"{metric} {event.metrics[metric]:.4g}"
            elif event.kind == "warning":
                out.print(f"  warning   {_warning(HealthWarning.model_validate(event.info))}")
            elif event.kind == "log" and "quality_skipped" in event.info:
                out.print(f"  quality   not measured: {escape(event.info['quality_skipped'])}")
            elif event.kind == "status":
                bar.update(task, description=str(event.info.get("status")))
            bar.update(task, stats="  ".join(stats.values()))
    job = api.get(job.id)
    colour = {"succeeded": "green", "failed": "red"}.get(job.status.value, "yellow")
    out.print(
        f"[{colour}]{job.id} {job.status.value}[/{colour}]"
        + (f": {_result(job)}" if job.result else "")
        + (f": {job.error}" if job.error else "")
    )
    return EXIT.get(job.status, 1)


def cmd_events(api: Client, args: argparse.Namespace) -> int:
    """The job's event history (GET /v1/jobs/{id}/metrics), or --follow it live (SSE)."""
    events = api.events(args.job_id) if args.follow else iter(api.metrics(args.job_id, args.kind))
    for event in events:
        if args.kind and event.kind != args.kind:
            continue
        if event.kind == "warning":
            out.print(
                f"{event.id}  {event.kind:<10} step {event.step:>6}  "
                f"{_warning(HealthWarning.model_validate(event.info))}"
            )
            continue
        values = " ".join(f"{k}={v:.4g}" for k, v in event.metrics.items())
        info = " ".join(f"{k}={v}" for k, v in event.info.items())
        out.print(
            f"{event.id}  {event.kind:<10} step {event.step:>6}  {values} {info}",
            markup=False,
            highlight=False,
        )
    return 0


def cmd_cancel(api: Client, args: argparse.Namespace) -> int:
    job = api.cancel(args.job_id)
    note = "cancelled" if job.status is JobStatus.CANCELLED else "stops at its next step"
    out.print(f"{job.id} {note}")
    return 0


def _read_spec_file(path: str) -> dict[str, Any]:
    """A sweep spec from a JSON or YAML file (YAML needs PyYAML: `pip install pyyaml`)."""
    text = Path(path).read_text()
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # optional: the light client needs it only for YAML
        except ImportError as exc:
            raise ValueError("reading YAML needs PyYAML: pip install pyyaml") from exc
        found = yaml.safe_load(text)
    else:
        found = json.loads(text)
    if not isinstance(found, dict):
        raise ValueError(f"{path}: expected a mapping (a sweep spec), got {type(found).__name__}")
    return found


def cmd_sweep(api: Client, args: argparse.Namespace) -> int:
    """`sweep submit FILE`, `sweep show ID [--watch]`, `sweep cancel ID`, `sweep list`."""
    if args.action == "submit":
        sweep = api.submit_sweep(_read_spec_file(args.file), idempotency_key=args.idempotency_key)
        out.print(
            f"submitted sweep [bold]{sweep.id}[/bold]: {sweep.n_trials} trials of "
            f"{sweep.spec.base.task} {sweep.spec.base.model}, {sweep.spec.sampler} sampler, "
            f"{sweep.metric.direction} {sweep.metric.name}"
        )
        if args.watch:
            return _watch_sweep(api, sweep.id)
        return 0
    if args.action == "list":
        table = Table("id", "name", "status", "trials", "best", "created")
        for sweep in api.sweeps(args.limit):
            best = f"{sweep.best.value:.4g} (trial {sweep.best.trial})" if sweep.best else ""
            table.add_row(
                sweep.id,
                sweep.name or "",
                sweep.status,
                f"{sum(sweep.counts.values())}/{sweep.n_trials}",
                best,
                sweep.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            )
        out.print(table)
        return 0
    if args.action == "cancel":
        sweep = api.cancel_sweep(args.sweep_id)
        out.print(f"{sweep.id} cancelled: its unfinished trials are cancelled")
        return 0
    if args.json:
        out.print_json(api.sweep(args.sweep_id).model_dump_json())
        return 0
    if args.watch:
        return _watch_sweep(api, args.sweep_id)
    out.print(_sweep_view(api.sweep(args.sweep_id)))
    return 0


def _watch_sweep(api: Client, sweep_id: str, poll_s: float = 2.0) -> int:
    """A live table until the sweep ends; 0 when it finished with a best trial."""
    sweep = api.sweep(sweep_id)
    with Live(_sweep_view(sweep), console=out, refresh_per_second=2) as live:
        while sweep.finished_at is None:
            time.sleep(poll_s)
            sweep = api.sweep(sweep_id)
            live.update(_sweep_view(sweep))
    return 0 if sweep.status == "finished" and sweep.best is not None else 1


def _sweep_view(sweep: SweepPublic) -> Group:
    """The sweep's header, its counts and best trial, and the table of trials (best marked)."""
    counts = ", ".join(f"{n} {status}" for status, n in sorted(sweep.counts.items()))
    head = [
        f"[bold]{sweep.id}[/bold]  {sweep.status}  {escape(sweep.name or '')}",
        f"  trials    {counts or 'none yet'} (of {sweep.n_trials}); "
        f"{sweep.metric.direction} {sweep.metric.name}",
    ]
    if sweep.waiting:
        head.append(f"  waiting   {escape(sweep.waiting)}")
    if sweep.best:
        params = escape(", ".join(f"{k}={v}" for k, v in sweep.best.params.items()))
        head.append(
            f"  best      trial {sweep.best.trial} ({sweep.best.job_id}): "
            f"{sweep.metric.name} {sweep.best.value:.4g} with {params}"
        )
    names = list(sweep.spec.space)
    table = Table("#", "job", "status", *map(escape, names), sweep.metric.name, "reason")
    best = sweep.best.trial if sweep.best else None
    for trial in sweep.trials:
        status = trial.status.value if trial.status else "waiting"
        mark = " [green]*best*[/]" if trial.number == best else ""
        table.add_row(
            f"{trial.number}{mark}",
            trial.job_id or "",
            status,
            *(_param(trial.params.get(n)) for n in names),
            "" if trial.value is None else f"{trial.value:.4g}",
            escape(trial.reason or ""),
        )
    return Group(*head, table)


def _param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else escape(str(value))


def cmd_artifacts(api: Client, args: argparse.Namespace) -> int:
    if args.download:
        for path in api.download(args.job_id, args.download, through_api=args.through_api):
            out.print(str(path))
        return 0
    table = Table("path", "size", "url (presigned, 15 min)")
    for artifact in api.artifacts(args.job_id):
        table.add_row(artifact.path, f"{artifact.size:,}", artifact.url)
    out.print(table)
    return 0


def cmd_datasets(api: Client, args: argparse.Namespace) -> int:
    if args.action == "upload":
        ds = api.upload_dataset(*args.files, name=args.name)
        out.print(
            f"uploaded [bold]{ds.id}[/bold]: {ds.num_images} images {ds.image[0]}x"
            f"{ds.image[1]}x{ds.image[2]}, {ds.num_classes} classes ({ds.format})"
        )
        return 0
    table = Table("id", "name", "format", "images", "shape", "classes", "created")
    for ds in api.datasets():
        table.add_row(
            ds.id,
            ds.name or "",
            ds.format,
            f"{ds.num_images:,}",
            "x".join(map(str, ds.image)),
            str(ds.num_classes),
            ds.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)
    return 0


def cmd_sample(api: Client, args: argparse.Namespace) -> int:
    """Draw images from a trained GAN: the grid PNG to -o, the array to --npz, the stored
    objects' keys and presigned URLs printed."""
    labels = args.label or None
    samples = api.sample(
        args.job_id,
        n=args.n,
        labels=labels,
        seed=args.seed,
        checkpoint=args.checkpoint,
        wait_s=args.wait,
    )
    saved = []
    if args.output:
        saved.append(
            api.fetch_artifact(samples.job_id, samples.grid, args.output, args.through_api)
        )
    if args.npz:
        saved.append(api.fetch_artifact(samples.job_id, samples.images, args.npz, args.through_api))
    n, c, h, w = samples.images.shape
    which = f"{samples.checkpoint} (step {samples.step})"
    label_note = f", labels {_labels(samples.labels)}" if samples.labels is not None else ""
    out.print(
        f"{n} samples {c}x{h}x{w} from {samples.job_id} at {which}, seed {samples.seed}"
        f"{label_note}",
        highlight=False,
    )
    # Whole lines, never cut to the terminal's width: the keys and URLs are to be copied.
    for name, link in (("grid", samples.grid), ("npz", samples.images)):
        out.print(f"  {name:<5} {link.key}", markup=False, highlight=False, soft_wrap=True)
        out.print(f"        {link.url}", markup=False, highlight=False, soft_wrap=True)
    for path in saved:
        out.print(f"saved {path}", markup=False, highlight=False, soft_wrap=True)
    return 0


def cmd_predict(api: Client, args: argparse.Namespace) -> int:
    """Classify image files (PNG, JPEG) or .npz batches: one table row per image with the
    predicted class and the top 3 probabilities."""
    table = Table("file", "predicted", "top 3 probabilities")
    for name in args.files:
        answer = api.predict(args.job_id, name, checkpoint=args.checkpoint, wait_s=args.wait)
        many = len(answer.predicted) > 1
        for i, (row, label) in enumerate(
            zip(answer.probabilities, answer.predicted_class, strict=True)
        ):
            top = sorted(range(len(row)), key=lambda k: row[k], reverse=True)[:3]
            table.add_row(
                escape(f"{name}[{i}]" if many else str(name)),
                f"[bold]{escape(label)}[/bold]",
                "  ".join(f"{escape(answer.classes[k])} {row[k]:.3f}" for k in top),
            )
    out.print(table)
    return 0


def _checkpoint(value: str) -> str | int:
    """--checkpoint: best, final, or a step number."""
    if value in ("best", "final"):
        return value
    if value.isdigit():
        return int(value)
    raise argparse.ArgumentTypeError("best, final or a step number")


def _labels(labels: list[int]) -> str:
    """A label list in few words: `3 x64`, or the list when it varies."""
    if labels and all(label == labels[0] for label in labels):
        return f"{labels[0]} x{len(labels)}"
    shown = ",".join(map(str, labels[:20]))
    return shown + ("..." if len(labels) > 20 else "")


def _status(job: JobPublic) -> str:
    colour = {"succeeded": "green", "failed": "red", "running": "cyan", "queued": "yellow"}
    planning = " (being planned)" if job.being_planned else ""
    return f"[{colour.get(job.status.value, 'white')}]{job.status.value}{planning}[/]"


def _result(job: JobPublic) -> str:
    if not job.result:
        return ""
    metrics = job.result["metrics"]
    if "test_accuracy" in metrics:
        return f"accuracy {metrics['test_accuracy']:.4f}"
    shown = {k: v for k, v in metrics.items() if k not in QUALITY_DETAILS}
    return ", ".join(f"{k} {v:.3f}" for k, v in shown.items())


def _has_quality(metrics: Mapping[str, float]) -> bool:
    return "fd" in metrics or "fid" in metrics


def _quality(m: Mapping[str, float]) -> str:
    """Sample-quality scores in words (docs/quality.md): the distance beside its real-vs-real
    floor, the share named with confidence beside real images', the class entropy."""
    metric = "fid" if "fid" in m else "fd"
    parts = [f"{metric} {m[metric]:.4g}"]
    if "fd_floor" in m:
        parts[0] += f" (real vs real {m['fd_floor']:.4g})"
    if "confident" in m:
        real = f" (real test images {m['confident_real']:.3f})" if "confident_real" in m else ""
        parts.append(f"named with p>=0.9 {m['confident']:.3f}{real}")
    if "class_entropy" in m:
        parts.append(f"class entropy {m['class_entropy']:.3f} nats")
    if "label_agreement" in m:
        parts.append(f"label agreement {m['label_agreement']:.3f}")
    return ", ".join(parts)


def _badge(code: str) -> str:
    return f"[bold black on yellow] {code} [/]"


def _warning(warning: HealthWarning) -> str:
    """A coloured badge, the step and the message (rich markup; the message escaped)."""
    return f"{_badge(warning.code)} step {warning.step}: {escape(warning.message)}"


def _memory(memory: dict[str, Any]) -> str:
    if memory.get("peak_gpu_allocated_bytes") is not None:
        return (
            f"peak GPU {memory['peak_gpu_allocated_bytes'] / 2**20:.1f} MiB allocated, "
            f"{memory['peak_gpu_reserved_bytes'] / 2**20:.1f} MiB reserved"
        )
    return f"peak host RSS {memory['peak_host_rss_bytes'] / 2**20:.0f} MiB (CPU run, not GPU)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainyard", description=__doc__.splitlines()[0])
    p.add_argument("--url", help="API URL (default: TRAINYARD_API_URL or .trainyard/stack.env)")
    p.add_argument(
        "--token", help="API token (default: TRAINYARD_API_TOKEN or .trainyard/stack.env)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="queue a job")
    s.add_argument("--spec", help="a JSON job spec file; flags override its fields")
    s.add_argument("--task", default="classifier", choices=["classifier", "gan", "cgan"])
    s.add_argument("--model")
    s.add_argument("--dataset")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--mode", choices=["fast", "book"])
    s.add_argument("--max-steps", type=int)
    s.add_argument("--resize", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--device", choices=["auto", "cpu", "cuda"])
    for flag in SPEED_FLAGS:  # --amp / --no-amp etc.: the spec's own help text
        field = ClassifierSpec.model_fields[flag]
        s.add_argument(
            f"--{flag.replace('_', '-')}", action=BooleanOptionalAction, help=field.description
        )
    s.add_argument("--name")
    s.add_argument("--idempotency-key", help="retry-safe: the same key returns the same job")
    s.add_argument("--watch", action="store_true", help="then follow it like `watch`")
    s.set_defaults(run=cmd_submit)

    j = sub.add_parser("jobs", help="list your jobs, newest first")
    j.add_argument("--status", choices=[s.value for s in JobStatus])
    j.add_argument("--task", choices=["classifier", "gan", "cgan"])
    j.add_argument("--limit", type=int, default=20)
    j.add_argument("--all", action="store_true", help="every page")
    j.set_defaults(run=cmd_jobs)

    for name, run, helptext in (
        ("show", cmd_show, "one job in detail"),
        ("watch", cmd_watch, "live progress until the job ends"),
        ("cancel", cmd_cancel, "cancel a job"),
    ):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("job_id")
        if name == "show":
            c.add_argument("--json", action="store_true")
        c.set_defaults(run=run)

    e = sub.add_parser("events", help="a job's event history (metrics, status, ...)")
    e.add_argument("job_id")
    e.add_argument("--kind", choices=get_args(EventKind))
    e.add_argument("--follow", action="store_true", help="stream live until the job ends")
    e.set_defaults(run=cmd_events)

    a = sub.add_parser("artifacts", help="list (or download) a job's artifacts")
    a.add_argument("job_id")
    a.add_argument("--download", metavar="DIR")
    a.add_argument(
        "--through-api",
        action="store_true",
        help="stream through the API instead of presigned object-storage URLs",
    )
    a.set_defaults(run=cmd_artifacts)

    sm = sub.add_parser("sample", help="draw images from a trained GAN (grid PNG, .npz)")
    sm.add_argument("job_id")
    sm.add_argument("-n", type=int, default=64, help="images to draw (at most 1,024)")
    sm.add_argument(
        "--label",
        type=int,
        action="append",
        help="cGAN: the label of every image; repeat it n times for one per image "
        "(default: labels cycle 0..K-1)",
    )
    sm.add_argument("--seed", type=int, default=0, help="the same seed gives the same images")
    sm.add_argument("-o", "--output", metavar="PNG", help="save the grid here")
    sm.add_argument("--npz", metavar="FILE", help="save the images (uint8 NxCxHxW) here")
    pr = sub.add_parser("predict", help="classify images with a trained classifier")
    pr.add_argument("job_id")
    pr.add_argument("files", nargs="+", help="PNG or JPEG images, or .npz batches")
    for c in (sm, pr):
        c.add_argument(
            "--checkpoint",
            type=_checkpoint,
            default="final",
            help="final (default), best, or a step with a kept checkpoint",
        )
        c.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the answer")
    sm.add_argument(
        "--through-api",
        action="store_true",
        help="fetch the files through the API instead of presigned object-storage URLs",
    )
    sm.set_defaults(run=cmd_sample)
    pr.set_defaults(run=cmd_predict)

    sw = sub.add_parser("sweep", help="submit, show, list or cancel sweeps (many trials)")
    swsub = sw.add_subparsers(dest="action", required=True)
    sws = swsub.add_parser("submit", help="start a sweep from a JSON or YAML spec file")
    sws.add_argument("file")
    sws.add_argument("--idempotency-key", help="retry-safe: the same key returns the same sweep")
    sws.add_argument("--watch", action="store_true", help="then show it live until it ends")
    swshow = swsub.add_parser("show", help="a sweep: counts, best trial, the trial table")
    swshow.add_argument("sweep_id")
    swshow.add_argument("--watch", action="store_true", help="a live table until it ends")
    swshow.add_argument("--json", action="store_true")
    swc = swsub.add_parser("cancel", help="cancel a sweep and its unfinished trials")
    swc.add_argument("sweep_id")
    swl = swsub.add_parser("list", help="your sweeps, newest first")
    swl.add_argument("--limit", type=int, default=20)
    sw.set_defaults(run=cmd_sweep)

    d = sub.add_parser("datasets", help="upload or list data sets")
    dsub = d.add_subparsers(dest="action", required=True)
    up = dsub.add_parser("upload", help="IDX files, one .npz, or one .zip of class folders")
    up.add_argument("files", nargs="+")
    up.add_argument("--name")
    dsub.add_parser("list", help="your uploaded data sets")
    d.set_defaults(run=cmd_datasets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with Client(args.url, args.token) as api:
            return int(args.run(api, args))
    except ApiError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        return 1
    except httpx.HTTPError as exc:
        err.print(f"error: cannot reach the API: {exc}", markup=False, highlight=False)
        return 1
    except (OSError, ValueError) as exc:  # unreadable file, bad JSON
        err.print(f"error: {type(exc).__name__}: {exc}", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
