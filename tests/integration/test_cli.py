"""The `trainyard` command line against the live stack, as a user types it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from devstack.stack import Stack

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
    """A saturating GAN (lr 1.0: D wins outright at once): `watch` prints its quality score and
    the warning as they come, `show` the best step and the warning, `events --kind` both."""
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
    assert re.search(r"warning +d_wins +step \d+: D wins outright", done.stdout), done.stdout

    shown = run(stack, "show", job_id)
    best = json.loads(run(stack, "show", job_id, "--json").stdout)["result"]["best"]
    assert best["step"] == 40 and best["metric"] == "fd"
    assert f"best      step 40, fd {best['value']:.4g} (final/best.pt)" in shown.stdout
    assert re.search(r"warning +d_wins +step \d+: D wins outright", shown.stdout), shown.stdout
    assert "class entropy" in shown.stdout

    listing = run(stack, "jobs", "--limit", "5")
    row = next(line for line in listing.stdout.splitlines() if job_id in line)
    assert "succeeded" in row and "d_wins" in row
    warnings = run(stack, "events", job_id, "--kind", "warning")
    assert re.search(r"warning +step +\d+ +d_wins +step \d+: D wins outright", warnings.stdout)
    quality = run(stack, "events", job_id, "--kind", "quality")
    assert "fd=" in quality.stdout and "best_step=40" in quality.stdout
