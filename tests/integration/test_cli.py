"""The `trainyard` command line against the live stack, as a user types it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from devstack.stack import Stack
from workers.trainer.data import load_dataset

TRAINYARD = str(Path(sys.executable).parent / "trainyard")


def run(
    stack: Stack, *args: str, token: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TRAINYARD_API_URL": stack.config.api_url,
        "TRAINYARD_API_TOKEN": token or stack.config.api_token,
        "COLUMNS": "200",
    }
    return subprocess.run(
        [TRAINYARD, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd="/"
    )


def test_submit_watch_show_jobs_artifacts(stack: Stack, tmp_path: Path) -> None:
    done = run(stack, "submit", "--max-steps", "40", "--name", "cli", "--channels-last", "--watch")
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.split("submitted ")[1].split()[0]
    assert f"{job_id} succeeded: accuracy" in done.stdout
    listing = run(stack, "jobs", "--limit", "5")
    assert job_id in listing.stdout and "succeeded" in listing.stdout
    shown = run(stack, "show", job_id)
    assert "step 40/40" in shown.stdout and "peak host RSS" in shown.stdout
    public = json.loads(run(stack, "show", job_id, "--json").stdout)
    assert public["id"] == job_id and public["spec"]["channels_last"] is True
    assert public["result"]["speed"] == ["channels_last"]  # the worker trained with it
    epochs = run(stack, "events", job_id, "--kind", "epoch")
    assert "test_accuracy=" in epochs.stdout and "step" in epochs.stdout
    followed = run(stack, "events", job_id, "--follow", "--kind", "status")
    assert "status=succeeded" in followed.stdout  # the stream ends after the terminal event
    table = run(stack, "artifacts", job_id)
    assert "final/model.pt" in table.stdout
    fetched = run(stack, "artifacts", job_id, "--download", str(tmp_path), "--through-api")
    assert fetched.returncode == 0 and (tmp_path / "final" / "model.pt").stat().st_size > 0


def test_watch_exits_with_the_outcome_and_cancel(stack: Stack) -> None:
    submitted = run(stack, "submit", "--max-steps", "3000", "--batch-size", "1")
    job_id = submitted.stdout.split("submitted ")[1].split()[0]
    assert run(stack, "cancel", job_id).returncode == 0
    watched = run(stack, "watch", job_id)
    assert watched.returncode == 2, watched.stdout  # cancelled
    again = run(stack, "cancel", job_id)
    assert again.returncode == 1 and again.stderr.startswith("error: HTTP 409 conflict")
    assert len(again.stderr.strip().splitlines()) == 1


def test_datasets_upload_and_list(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "tiny.npz"
    np.savez(path, x=np.zeros((10, 28, 28), np.uint8), y=np.arange(10))
    up = run(stack, "datasets", "upload", str(path), "--name", "tiny")
    assert up.returncode == 0 and "10 images 1x28x28, 10 classes (npz)" in up.stdout
    ds_id = up.stdout.split("uploaded ")[1].split(":")[0]
    assert ds_id in run(stack, "datasets", "list").stdout


def test_clear_one_line_errors(stack: Stack, tmp_path: Path) -> None:
    missing = run(stack, "show", "0000000000000000")
    assert missing.returncode == 1 and "not_found" in missing.stderr
    bad = run(stack, "submit", "--epochs", "0")
    assert bad.returncode == 1 and "(epochs)" in bad.stderr
    denied = run(stack, "jobs", token="wrong")
    assert denied.returncode == 1 and "401 unauthorized" in denied.stderr
    env = {**os.environ, "TRAINYARD_API_URL": "http://127.0.0.1:9", "TRAINYARD_API_TOKEN": "x"}
    down = subprocess.run([TRAINYARD, "jobs"], capture_output=True, text=True, env=env, cwd="/")
    assert down.returncode == 1 and down.stderr.startswith("error: cannot reach the API")
    for result in (missing, bad, denied, down):
        assert len(result.stderr.strip().splitlines()) == 1


def test_quality_best_step_and_warnings(stack: Stack, tmp_path: Path) -> None:
    """A saturating GAN (lr 1.0: it breaks at once, D winning outright or G collapsing onto one
    image, as its seed has it): `watch` prints its quality score and the health warning as they
    come, `show` the best step and the warning, `events --kind` both."""
    spec = tmp_path / "saturating.json"
    spec.write_text(
        json.dumps({"task": "gan", "lr": 1.0, "max_steps": 40, "log_every": 1, "sample_every": 40})
    )
    # The stack's first GAN trains mnist-5k's reference classifier first (minutes on a CPU).
    done = run(
        stack, "submit", "--spec", str(spec), "--name", "cli saturating", "--watch", timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.split("submitted ")[1].split()[0]
    assert re.search(r"quality +step 40: fd [\d.]+ \(real vs real [\d.]+\)", done.stdout)
    assert "named with p>=0.9" in done.stdout and "best step 40" in done.stdout
    warned = re.search(r"warning +(d_wins|mode_collapse) +step \d+: ", done.stdout)
    assert warned, done.stdout
    kind = warned.group(1)

    shown = run(stack, "show", job_id)
    best = json.loads(run(stack, "show", job_id, "--json").stdout)["result"]["best"]
    assert best["step"] == 40 and best["metric"] == "fd"
    assert f"best      step 40, fd {best['value']:.4g} (final/best.pt)" in shown.stdout
    assert re.search(rf"warning +{kind} +step \d+: ", shown.stdout), shown.stdout
    assert "class entropy" in shown.stdout

    listing = run(stack, "jobs", "--limit", "5")
    row = next(line for line in listing.stdout.splitlines() if job_id in line)
    assert "succeeded" in row and kind in row
    warnings = run(stack, "events", job_id, "--kind", "warning")
    assert re.search(rf"warning +step +\d+ +{kind} +step \d+: ", warnings.stdout)
    quality = run(stack, "events", job_id, "--kind", "quality")
    assert "fd=" in quality.stdout and "best_step=40" in quality.stdout


def test_sample_writes_the_grid_png_and_the_npz(stack: Stack, tmp_path: Path) -> None:
    """`trainyard sample` on a finished cGAN: the grid PNG (-o) and the images (--npz) of the
    label asked for, their keys and URLs printed; the same seed gives the same bytes."""
    # The stack's first GAN trains mnist-5k's reference classifier first (minutes on a CPU).
    done = run(
        stack,
        *("submit", "--task", "cgan", "--max-steps", "20", "--batch-size", "16"),
        *("--name", "cli sample", "--watch"),
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.split("submitted ")[1].split()[0]
    png, npz = tmp_path / "grid.png", tmp_path / "images.npz"
    args = ("sample", job_id, "-n", "12", "--label", "3", "--seed", "7")
    drawn = run(stack, *args, "-o", str(png), "--npz", str(npz))
    assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    assert f"12 samples 1x28x28 from {job_id} at final (step 20), seed 7, labels 3 x12" in (
        drawn.stdout
    )
    assert f"jobs/{job_id}/samples-on-demand/" in drawn.stdout and "X-Amz-Signature" in drawn.stdout
    with Image.open(png) as grid:
        assert grid.format == "PNG"
        assert grid.size == (8 * 30 + 2, 2 * 30 + 2)  # 8 per row, 2-pixel padding
    with np.load(npz) as saved:
        assert saved["images"].shape == (12, 1, 28, 28) and saved["images"].dtype == np.uint8
        assert saved["labels"].tolist() == [3] * 12
    again = tmp_path / "again.npz"
    repeated = run(stack, *args, "--npz", str(again), "--through-api")
    assert repeated.returncode == 0, repeated.stderr
    assert again.read_bytes() == npz.read_bytes()  # the same request, the same images
    too_many = run(stack, "sample", job_id, "-n", "1025")
    assert too_many.returncode == 1 and too_many.stderr.startswith("error: HTTP 422")
    assert "(n)" in too_many.stderr and len(too_many.stderr.strip().splitlines()) == 1


def test_predict_prints_the_class(stack: Stack, tmp_path: Path) -> None:
    """`trainyard predict` on a finished classifier: a table row per image with the class it
    predicts and the top 3 probabilities, for PNG files and an .npz batch."""
    done = run(stack, "submit", "--max-steps", "150", "--name", "cli predict", "--watch")
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = done.stdout.split("submitted ")[1].split()[0]
    test = load_dataset("mnist-5k")
    x, y = test.test_x[::25].numpy(), test.test_y[::25].tolist()  # 4 of each class
    batch = tmp_path / "batch.npz"
    np.savez(batch, x=x)
    table = run(stack, "predict", job_id, str(batch))
    assert table.returncode == 0, table.stdout + table.stderr
    rows = re.findall(r"batch\.npz\[(\d+)\] +│ +(\d) +│ +((?:\d \d\.\d{3} *){3})", table.stdout)
    assert [int(i) for i, _, _ in rows] == list(range(40)), table.stdout
    predicted = [int(label) for _, label, _ in rows]
    assert sum(p == t for p, t in zip(predicted, y, strict=True)) >= 30  # a 150-step CNN
    # Clear digits the model gets right, as PNG files: one row each, under the file's name.
    right = [i for i in range(40) if predicted[i] == y[i]][:2]
    files = []
    for i in right:
        path = tmp_path / f"digit-{i}.png"
        Image.fromarray(x[i, 0]).save(path)
        files.append(str(path))
    shown = run(stack, "predict", job_id, *files, "--checkpoint", "final")
    assert shown.returncode == 0, shown.stderr
    for i in right:
        row = next(line for line in shown.stdout.splitlines() if f"digit-{i}.png" in line)
        top = re.search(r"│ +(\d) +│ +(\d) (\d\.\d{3})", row)
        assert top and int(top.group(1)) == y[i] == int(top.group(2)), row
    best = run(stack, "predict", job_id, str(batch), "--checkpoint", "best")  # final/best.pt
    assert best.returncode == 0 and best.stdout.count("batch.npz[") == 40, best.stderr
    missing = run(stack, "predict", job_id, str(batch), "--checkpoint", "7")  # no such step
    assert missing.returncode == 1 and missing.stderr.startswith("error: HTTP 404")
    assert "(checkpoint)" in missing.stderr
    wrong = run(stack, "predict", job_id, __file__)  # not an image
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: HTTP 422")
    assert "(file)" in wrong.stderr
