"""Sample quality of fast-mode GANs on mnist-5k (issue 17): today's recipe, each extra added to
it alone, and the final defaults, for conv_gan and conv_cgan, each a default job through fit()
on the CPU, scored on the reference classifier (workers/trainer/quality.py).

    taskset -c 1 python -m bench.gan_quality [--only baseline,final] [--models conv_gan]

Prints, per model: variant, wall s of the whole fit() call, its ratio to the baseline's,
confident (share of samples named with p >= 0.9) beside confident_real (the same for real test
digits), class_entropy (nats), label_agreement (cGAN) and fd (with its real-vs-real floor).
Exits 1 if the final defaults miss a target:
confident >= 0.9 x confident_real, class_entropy >= 2.25, label_agreement >= 0.90 (cGAN),
and, when the baseline ran beside it, wall <= 1.25 x the baseline's."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from shared.config import get_settings
from shared.schemas import JobSpecAdapter
from workers.trainer import quality
from workers.trainer.data import load_dataset
from workers.trainer.fit import fit
from workers.trainer.models import generator_from_export
from workers.trainer.recipes import FAST_TRICKS, NO_TRICKS, GanTricks, _prepare_for
from workers.trainer.run import Run

MODELS = {"conv_gan": "gan", "conv_cgan": "cgan"}
# Today's fast defaults (before issue 17), given explicitly so the baseline stays today's.
TODAY_SPEC = {"epochs": 30, "batch_size": 64, "lr": 2e-4}
TARGET_CONFIDENT = 0.9  # x confident_real
TARGET_ENTROPY = 2.25  # nats; a uniform histogram of 10 classes is ln 10 = 2.303
TARGET_AGREEMENT = 0.90
TARGET_RATIO = 1.25


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    spec: dict[str, Any] = field(default_factory=dict)  # over the spec's defaults
    tricks: GanTricks | None = None  # None: fast mode's own (FAST_TRICKS)


FAST_SPEC = {**TODAY_SPEC, "lr": 2e-3}
VARIANTS = [
    Variant(
        "baseline", "before: 30 epochs, batch 64, lr 2e-4, real label 0.9", TODAY_SPEC, NO_TRICKS
    ),
    # What was kept, added one after the other: the final defaults are the last of these.
    Variant("lr", "+ lr 2e-3 (10x)", FAST_SPEC, NO_TRICKS),
    Variant("ema", "+ EMA of G, decay 0.999", FAST_SPEC, replace(NO_TRICKS, ema=0.999)),
    Variant("final", "+ self-conditioning on 20 clusters (conv_gan only) (= the new defaults)"),
    # What was dropped, each added to the final defaults alone.
    Variant(
        "translate",
        "final + DiffAugment translation",
        tricks=replace(FAST_TRICKS, augment=("translation",)),
    ),
    Variant(
        "cutout",
        "final + DiffAugment translation, cutout",
        tricks=replace(FAST_TRICKS, augment=("translation", "cutout")),
    ),
    Variant("ttur", "final + TTUR: D lr x2", tricks=replace(FAST_TRICKS, lr_d=2.0)),
    Variant("sn", "final + spectral norm in D", tricks=replace(FAST_TRICKS, spectral_norm=True)),
    Variant("no_smooth", "final + real label 1.0", tricks=replace(FAST_TRICKS, real_label=1.0)),
]


def score(path: Path, meter: quality.QualityMeter) -> dict[str, float]:
    """Scores of the generator in a job's final/model.pt (its `state_dict`: the sampling G)."""
    saved = torch.load(path, weights_only=True, map_location="cpu")
    k = saved["num_classes"]
    gen = generator_from_export(saved)

    def generate(z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return gen(z) if labels is None else gen(z, F.one_hot(labels, k).float())

    return meter.score(generate)


def run_variant(model: str, variant: Variant, root: Path) -> dict[str, float]:
    body = {"task": MODELS[model], "model": model, "device": "cpu", **variant.spec}
    spec = JobSpecAdapter.validate_python(body)
    job = f"{model}-{variant.name}-{time.time_ns() % 10**9}"
    start = time.perf_counter()
    summary = fit(spec, Run.local(root, job_id=job), tricks=variant.tricks)
    wall = time.perf_counter() - start
    meter = quality.meter_for(
        load_dataset("mnist-5k"),
        _prepare_for(spec),
        spec.task == "cgan",
        Run.local(root).store,
        get_settings(),
        torch.device("cpu"),
        spec.seed,
    )
    scores = score(root / "jobs" / job / "final" / "model.pt", meter)
    return {"wall_s": wall, "steps": summary.steps, **scores}


def misses(final: dict[str, float], baseline: dict[str, float] | None, cgan: bool) -> list[str]:
    """The targets the final defaults miss, in words (none: [])."""
    out = []
    if final["confident"] < TARGET_CONFIDENT * final["confident_real"]:
        out.append(f"confident {final['confident']:.3f} < 0.9 x {final['confident_real']:.3f}")
    if final["class_entropy"] < TARGET_ENTROPY:
        out.append(f"class_entropy {final['class_entropy']:.3f} < {TARGET_ENTROPY}")
    if cgan and final["label_agreement"] < TARGET_AGREEMENT:
        out.append(f"label_agreement {final['label_agreement']:.3f} < {TARGET_AGREEMENT}")
    if baseline is not None and final["wall_s"] > TARGET_RATIO * baseline["wall_s"]:
        ratio = final["wall_s"] / baseline["wall_s"]
        out.append(f"wall {ratio:.2f} x the baseline's > {TARGET_RATIO}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [v.name for v in VARIANTS]
    parser.add_argument("--only", default=",".join(names), help=f"of {','.join(names)}")
    parser.add_argument("--models", default=",".join(MODELS), help="conv_gan,conv_cgan")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--root", default=".trainyard/bench/gan_quality", help="run folder")
    args = parser.parse_args(argv)
    only, models = args.only.split(","), args.models.split(",")
    for name in only:
        if name not in names:
            parser.error(f"unknown variant {name!r}; known: {', '.join(names)}")
    for model in models:
        if model not in MODELS:
            parser.error(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    # The reference classifier is trained once and cached in this store before any timed job
    # (a one-off, outside the time bound).
    data = load_dataset("mnist-5k")
    quality.reference.load_or_train(data, Run.local(root).store, torch.device("cpu"))
    print(f"mnist-5k, CPU, {args.threads} torch thread(s); fast tricks: {FAST_TRICKS}")
    failed = False
    for model in models:
        rows: dict[str, dict[str, float]] = {}
        print(f"\n{model}")
        print(
            f"  {'variant':<10} {'wall s':>7} {'ratio':>6} {'confident':>9} {'(real)':>7} "
            f"{'entropy':>7} {'agree':>6} {'fd':>7} {'(floor)':>7}  what"
        )
        for variant in (v for v in VARIANTS if v.name in only):
            r = rows[variant.name] = run_variant(model, variant, root)
            base = rows.get("baseline")
            ratio = f"{r['wall_s'] / base['wall_s']:6.2f}" if base else f"{'-':>6}"
            agree = f"{r['label_agreement']:6.3f}" if "label_agreement" in r else f"{'-':>6}"
            print(
                f"  {variant.name:<10} {r['wall_s']:7.1f} {ratio} {r['confident']:9.3f} "
                f"{r['confident_real']:7.3f} {r['class_entropy']:7.3f} {agree} {r['fd']:7.2f} "
                f"{r['fd_floor']:7.2f}  {variant.what}",
                flush=True,
            )
        if "final" in rows:
            missed = misses(rows["final"], rows.get("baseline"), MODELS[model] == "cgan")
            print(f"  final: {'; '.join(missed) if missed else 'every target met'}")
            failed = failed or bool(missed)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
