"""The dashboard in Debian's chromium against a real stack: sign-in, the job list, submitting,
live progress and curves, the sample-grid timeline and comparison, memory labels, artifacts,
cancelling. Every wait polls the page (expect / wait_for_function); none is a fixed sleep."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import FilePayload, Page, Route, expect

from devstack.stack import Stack
from tests.e2e.browser import (
    JOB_TIMEOUT_MS,
    RECORDER,
    SHOTS,
    image_digests,
    job_id_from_url,
    open_job,
    save_small_png,
    seen,
    shot,
    sign_in,
    wait_for_image,
)
from tests.e2e.conftest import SMALL_GAN
from trainyard.client import Client
from workers.trainer.data import load_dataset

DOCS_SHOT_MAX_BYTES = 150_000
SHAPE = "1\N{MULTIPLICATION SIGN}28\N{MULTIPLICATION SIGN}28"  # an MNIST image, as shown
# Every GAN here is scored with the data set's reference classifier: trained once, up front.
pytestmark = pytest.mark.usefixtures("reference_classifier")


def test_a_wrong_token_is_refused_and_the_right_one_shows_the_jobs(
    page: Page, base_url: str, token: str
) -> None:
    page.goto(base_url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shot(page, "01-sign-in")

    page.locator("#token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    error = page.locator("#signin-error")
    expect(error).to_contain_text("the API refused this token")
    expect(error).to_contain_text("401 unauthorized")
    assert page.evaluate("() => sessionStorage.length") == 0  # a refused token is not kept
    shot(page, "02-wrong-token")

    sign_in(page, base_url, token)
    expect(page.locator("#jobs-table")).to_be_visible()
    expect(page.locator("#list-updated")).to_contain_text("updated")
    shot(page, "03-job-list")

    page.get_by_role("link", name="sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("#signin-error")).to_have_text("Signed out.")
    assert page.evaluate("() => sessionStorage.length") == 0


def test_a_bad_submission_shows_the_apis_message_naming_the_field(
    page: Page, base_url: str, token: str, http: httpx.Client
) -> None:
    before = http.get("/v1/jobs").json()["count"]
    sign_in(page, base_url, token)
    form = page.locator("#submit-form")
    form.get_by_label("epochs").fill("0")
    form.get_by_role("button", name="Submit").click()
    error = page.locator("#submit-error")
    # Exactly what the API says to any client for the same body.
    expected = http.post("/v1/jobs", json={"task": "gan", "epochs": 0}).json()["error"]
    assert expected["field"] == "epochs"
    expect(error).to_contain_text(expected["message"])
    expect(error).to_contain_text("field: epochs")
    expect(error).to_contain_text("HTTP 422 validation_error")
    expect(form.locator("[name=epochs]")).to_have_attribute("aria-invalid", "true")
    shot(page, "04-bad-submission")

    # Not a number: sent as typed, so the API's validation names the field.
    form.get_by_label("epochs").fill("")
    form.get_by_label("lr").fill("fast")
    form.get_by_role("button", name="Submit").click()
    expect(error).to_contain_text("field: lr")
    expect(form.locator("[name=lr]")).to_have_attribute("aria-invalid", "true")
    expect(form.locator("[name=epochs]")).not_to_have_attribute("aria-invalid", "true")
    assert http.get("/v1/jobs").json()["count"] == before  # nothing was queued


def test_a_job_submitted_in_the_form_shows_progress_and_curves_live(
    page: Page, base_url: str, token: str, http: httpx.Client
) -> None:
    sign_in(page, base_url, token)
    page.evaluate(RECORDER)  # the app is one page: the recorder stays through navigation
    form = page.locator("#submit-form")
    form.get_by_label("task").select_option("gan")
    form.get_by_label("model").select_option(SMALL_GAN["model"])
    form.get_by_label("max steps").fill(str(SMALL_GAN["max_steps"]))
    form.get_by_label("sample every").fill(str(SMALL_GAN["sample_every"]))
    form.get_by_label("batch size").fill(str(SMALL_GAN["batch_size"]))
    form.get_by_label("name").fill("e2e <b>form</b> job")  # shown as text, never as markup
    form.get_by_label("channels_last").check()  # an opt-in speed flag
    form.get_by_role("button", name="Submit").click()
    expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]+$"))
    job_id = job_id_from_url(page)
    expect(page.locator("#job-name")).to_have_text("e2e <b>form</b> job")
    expect(page.locator("#job-what")).to_contain_text("channels_last")
    shot(page, "05-submitted")

    status = page.locator("#job-status")
    # A step between the first and the last while the page says "running": the stream is live.
    page.wait_for_function(
        "() => window.__seen.some(e => e.status === 'running' && e.step > 0 && e.step < 60)",
        timeout=JOB_TIMEOUT_MS,
    )
    shot(page, "06-running")
    expect(status).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-step")).to_contain_text("step 60 / 60")
    shot(page, "07-finished")

    running = [e for e in seen(page) if e["job"] == job_id and e["status"] == "running"]
    steps = [e["step"] for e in running if e["step"] > 0]
    assert len(set(steps)) >= 2, running  # the step count rose on the page during the run
    assert steps == sorted(steps), running
    points = sorted({e["points"] for e in running if e["points"] > 0})
    assert len(points) >= 2, running  # and the loss curve gained points during the run
    # Every logged step is on the curves: D and G loss, D(real) and D(G(z)) at steps 10..60.
    charts = page.locator("#charts .chart")
    expect(charts).to_have_count(2)
    for i in range(2):
        expect(charts.nth(i)).to_have_attribute("data-points", "12")
    public = http.get(f"/v1/jobs/{job_id}").json()
    assert public["step"] == 60 and public["spec"]["channels_last"] is True
    assert public["spec"]["amp"] is False and public["result"]["speed"] == ["channels_last"]


def test_the_sample_timeline_shows_another_steps_grid(
    page: Page, base_url: str, token: str, finished_gans: tuple[str, str], http: httpx.Client
) -> None:
    job_id, _ = finished_gans
    sign_in(page, base_url, token)
    open_job(page, job_id)
    label = page.locator("#sample-label")
    img = page.locator("#sample-img")
    expect(label).to_have_text("step 60 (4 of 4)")
    wait_for_image(img, 60)
    expect(page.locator("#charts .chart").first).to_have_attribute("data-points", "12")
    save_docs_screenshot(page)
    last = image_digests(img)

    slider = page.locator("#sample-slider")
    slider.focus()
    page.keyboard.press("Home")
    expect(label).to_have_text("step 15 (1 of 4)")
    wait_for_image(img, 15)
    first = image_digests(img)
    shot(page, "09-timeline-step-15")

    assert first["src"] != last["src"] and first["src"].startswith("blob:")
    assert first["pixels"] != last["pixels"]  # the decoded image changed, not just its URL
    assert (first["width"], first["height"]) == (last["width"], last["height"])
    # What the page shows is the job's artifact for that step, byte for byte.
    for step, digest in ((15, first["bytes"]), (60, last["bytes"])):
        png = http.get(f"/v1/jobs/{job_id}/artifacts/samples/step-{step:08d}.png").content
        assert hashlib.sha256(png).hexdigest() == digest

    page.keyboard.press("ArrowRight")
    expect(label).to_have_text("step 30 (2 of 4)")
    wait_for_image(img, 30)


def test_side_by_side_compares_two_jobs_at_the_same_step(
    page: Page, base_url: str, token: str, finished_gans: tuple[str, str]
) -> None:
    job_id, other_id = finished_gans
    sign_in(page, base_url, token)
    open_job(page, job_id)
    wait_for_image(page.locator("#sample-img"), 60)
    page.locator("#compare-job").select_option(other_id)
    other = page.locator("#compare-img")
    wait_for_image(other, 60)
    expect(page.locator("#compare-caption")).to_have_text(f"job {other_id} · step 60 (same step)")
    expect(page.locator(".grids img:visible")).to_have_count(2)
    shot(page, "10-side-by-side")
    mine, theirs = image_digests(page.locator("#sample-img")), image_digests(other)
    assert mine["pixels"] != theirs["pixels"]  # another seed, other images

    page.locator("#sample-slider").focus()
    page.keyboard.press("Home")
    wait_for_image(page.locator("#sample-img"), 15)
    wait_for_image(other, 15)  # the comparison follows the slider
    expect(page.locator("#compare-caption")).to_contain_text("step 15 (same step)")


def test_the_sample_quality_section_shows_its_curves_and_the_best_step(
    page: Page, base_url: str, token: str, finished_gans: tuple[str, str], client: Client
) -> None:
    job_id, _ = finished_gans
    job = client.get(job_id)
    best = (job.result or {})["best"]
    scores = client.metrics(job_id, kind="quality")
    assert [e.step for e in scores] == [15, 30, 45, 60]
    sign_in(page, base_url, token)
    open_job(page, job_id)
    section = page.locator("#quality")
    expect(section).to_be_visible()
    charts = section.locator("#quality-charts .chart")
    expect(charts).to_have_count(2)
    distance, named = charts.nth(0), charts.nth(1)
    # Every score is drawn: the FD and its real-vs-real floor at steps 15, 30, 45 and 60, ...
    expect(distance).to_have_attribute("data-points", "8")
    expect(distance.locator("polyline[data-series=fd]")).to_have_count(1)
    expect(distance.locator("polyline[data-series=fd_floor]")).to_have_count(1)
    expect(distance.locator(".legend")).to_contain_text("real vs real")
    # ... the best step marked on it, ...
    expect(distance).to_have_attribute("data-mark", str(best["step"]))
    expect(distance.locator("line.mark")).to_have_count(1)
    # ... and the shares named with p >= 0.9, the samples' beside the real images'.
    expect(named).to_have_attribute("data-points", "8")
    expect(named.locator(".legend")).to_contain_text("real test images")
    shot(page, "17-quality")

    text = page.locator("#quality-best")
    expect(text).to_have_text(re.compile(rf"^best: step {best['step']}, fd \S+ — final/best\.pt$"))
    shown = float(text.inner_text().split(", fd ")[1].split(" ")[0])
    assert shown == pytest.approx(best["value"], rel=1e-3)
    entropy = page.locator("#quality-entropy")
    expect(entropy).to_contain_text(f"class entropy {scores[-1].metrics['class_entropy']:.3f} nats")
    expect(entropy).to_contain_text("ideal ln 10 = 2.303")
    expect(page.locator("#quality-note")).to_be_hidden()
    expect(page.locator("#result-table")).to_contain_text(f"step {best['step']}, fd")


BROKEN_GAN = re.compile(r"^(d_wins|mode_collapse)$")  # a saturating GAN's health warnings


def test_the_quality_warning_of_a_saturating_gan_shows_as_a_badge_on_the_page_and_in_the_list(
    page: Page, base_url: str, token: str, client: Client
) -> None:
    """lr 1.0: the GAN breaks at once (D wins outright, or G collapses onto one image, as its
    seed has it) and the job succeeds, with its health warning as a badge."""
    spec = {"task": "gan", "lr": 1.0, "max_steps": 40, "log_every": 1, "sample_every": 40}
    job = client.submit({**spec, "name": "e2e saturating"})
    sign_in(page, base_url, token)
    open_job(page, job.id)  # while it runs: the warning event adds the badge
    badge = page.locator("#job-warnings .badge.warning")
    expect(badge).to_have_attribute("data-code", BROKEN_GAN, timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(badge).to_have_count(1)  # the record's warning and its event: one badge
    (warning,) = client.get(job.id).warnings
    expect(badge).to_have_attribute("data-code", warning.code)
    expect(badge).to_have_attribute("title", warning.message)  # the whole message on hover
    shot(page, "18-warning-badge")

    page.goto(base_url + "/#/")
    row = page.locator(f'#jobs-table tr[data-job-id="{job.id}"]')
    listed = row.locator(".badge.warning")
    expect(listed).to_have_count(1)
    expect(listed).to_have_attribute("data-code", warning.code)
    expect(listed).to_have_attribute("title", warning.message)
    expect(row.locator(".badge.status-succeeded")).to_be_visible()
    shot(page, "19-warning-in-list")


def test_skipped_sample_quality_says_why(
    page: Page, base_url: str, token: str, client: Client, tmp_path: Path
) -> None:
    """Forty images make a test split of four: too few for a Fréchet distance. No score, and
    the reason on the page."""
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "blobs.npz", x=images)
    dataset = client.upload_dataset(tmp_path / "blobs.npz")
    job = client.submit({"task": "gan", "dataset": dataset.id, "max_steps": 10, "sample_every": 10})
    sign_in(page, base_url, token)
    open_job(page, job.id)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    note = (client.get(job.id).result or {})["quality_note"]
    assert note and "test split has 4 images" in note
    expect(page.locator("#quality-note")).to_have_text(f"Sample quality not measured: {note}")
    expect(page.locator("#quality-charts .chart")).to_have_count(0)
    expect(page.locator("#quality-best")).to_have_text("")
    shot(page, "20-quality-skipped")


def test_the_memory_panel_labels_host_memory_as_not_gpu(
    page: Page, base_url: str, token: str, finished_gans: tuple[str, str], client: Client
) -> None:
    job_id, _ = finished_gans
    memory = (client.get(job_id).result or {})["memory"]
    sign_in(page, base_url, token)
    open_job(page, job_id)
    card = page.locator("#memory-card")
    expect(card).to_contain_text("from memory.json")
    expect(card).to_contain_text(memory["note"])  # the report's own words
    shot(page, "11-memory")
    if memory["device"] != "cpu":  # a CUDA worker: GPU figures, and no host figure
        expect(card).to_contain_text("peak GPU allocated")
        expect(card).to_contain_text("peak GPU reserved")
        expect(card).not_to_contain_text("host RSS")
        return
    expect(card).to_contain_text("peak host RSS (host memory, not GPU)")
    expect(card).to_contain_text("peak step tensor bytes (profiler)")
    expect(card).to_contain_text("not GPU")
    expect(card).not_to_contain_text("GPU allocated")
    expect(card).not_to_contain_text("GPU reserved")
    rss = page.locator("#memory-table tr", has_text="peak host RSS")
    expect(rss).to_contain_text(f"{memory['peak_host_rss_bytes'] / 2**20:.1f} MiB")


def test_artifacts_download_through_the_api_and_show_presigned_urls(
    page: Page, base_url: str, token: str, finished_gans: tuple[str, str]
) -> None:
    job_id, _ = finished_gans
    sign_in(page, base_url, token)
    open_job(page, job_id)
    row = page.locator('#artifacts-table tr[data-path="summary.json"]')
    with page.expect_download() as info:
        row.get_by_role("button", name="download").click()
    download = info.value
    assert download.suggested_filename == "summary.json"
    summary = json.loads(Path(download.path()).read_text())
    assert summary["job_id"] == job_id and summary["steps"] == 60
    presigned = row.locator("a.url")
    expect(presigned).to_have_attribute(
        "href", re.compile(rf"/jobs/{job_id}/summary\.json\?.*X-Amz-Signature=")
    )
    expect(page.locator('#artifacts-table tr[data-path="final/model.pt"]')).to_be_visible()
    shot(page, "12-artifacts")


def test_the_list_filters_and_pages(
    page: Page, base_url: str, token: str, finished_gans: tuple[str, str]
) -> None:
    sign_in(page, base_url, token)
    page.goto(f"{base_url}/#/?limit=1")
    rows = page.locator("#jobs-table tbody tr")
    expect(rows).to_have_count(1)
    page.get_by_role("button", name="more").click()
    expect(rows).to_have_count(2)
    shot(page, "13-list-more")

    page.locator("#filter-status").select_option("succeeded")
    expect(page).to_have_url(re.compile(r"status=succeeded"))
    expect(rows.first).to_be_visible()
    assert set(rows.evaluate_all("rows => rows.map(r => r.dataset.status)")) == {"succeeded"}
    page.locator("#filter-task").select_option("cgan")  # none of those here
    expect(page.locator("#jobs-empty")).to_be_visible()
    expect(rows).to_have_count(0)


def test_a_classifier_shows_accuracy_and_its_confusion_matrix(
    page: Page, base_url: str, token: str, client: Client
) -> None:
    job = client.submit({"task": "classifier", "max_steps": 30, "epochs": 1, "sample_every": 15})
    sign_in(page, base_url, token)
    open_job(page, job.id)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#confusion")).to_be_visible()
    page.wait_for_function(
        "() => { const i = document.querySelector('#confusion-img'); "
        "return i.complete && i.naturalWidth > 0; }"
    )
    accuracy = page.locator("#charts .chart", has_text="held-out accuracy")
    expect(accuracy).to_have_attribute("data-points", "1")
    expect(page.locator("#samples-note")).to_contain_text("red where the prediction is wrong")
    expect(page.locator("#result-table")).to_contain_text("test_accuracy")
    shot(page, "14-classifier")


def test_the_event_stream_resumes_after_the_api_restarts(
    page: Page, base_url: str, token: str, client: Client, stack: Stack
) -> None:
    job = client.submit({**SMALL_GAN, "max_steps": 200, "sample_every": 100, "name": "resume"})
    resumed_from: list[str | None] = []
    page.on(
        "request",
        lambda r: (
            resumed_from.append(r.headers.get("last-event-id"))
            if r.url.endswith(f"/v1/jobs/{job.id}/events")
            else None
        ),
    )
    sign_in(page, base_url, token)
    open_job(page, job.id)
    page.wait_for_function(
        "() => Number(document.querySelector('#job-step').dataset.step) >= 20",
        timeout=JOB_TIMEOUT_MS,
    )
    stack.restart(stack.api, stack.ready)  # drops the stream mid-job
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    shot(page, "15-resumed")
    assert resumed_from[0] is None and len(resumed_from) >= 2, resumed_from
    assert all(re.fullmatch(r"\d+-\d+", last or "") for last in resumed_from[1:]), resumed_from
    # Every event exactly once: none lost in the gap, none replayed twice.
    history = client.metrics(job.id)
    expect(page.locator("#stream-state")).to_have_attribute("data-events", str(len(history)))
    for i in range(2):
        expect(page.locator("#charts .chart").nth(i)).to_have_attribute("data-points", "40")


def test_the_cancel_button_stops_a_job(
    page: Page, base_url: str, token: str, client: Client
) -> None:
    job = client.submit({**SMALL_GAN, "max_steps": 1_000_000, "sample_every": 100_000})
    sign_in(page, base_url, token)
    open_job(page, job.id)
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    shot(page, "16-cancelled")
    assert client.get(job.id).status == "cancelled"


def test_the_sample_button_shows_a_grid_of_a_finished_gan(
    page: Page, base_url: str, token: str, finished_gans: tuple[str, str], http: httpx.Client
) -> None:
    job_id, _ = finished_gans
    sign_in(page, base_url, token)
    open_job(page, job_id)
    card = page.locator("#use-card")
    expect(card).to_be_visible()
    expect(page.locator("#use-predict")).to_be_hidden()  # a GAN: no image drop
    expect(page.locator("#use-label-field")).to_be_hidden()  # unconditional: no labels
    form = page.locator("#use-sample-form")
    form.get_by_label("images").fill("16")
    form.get_by_label("seed").fill("5")
    form.get_by_role("button", name="Sample").click()
    grid = page.locator("#use-grid")
    expect(grid).to_have_attribute("data-n", "16")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=grid.element_handle(), timeout=10_000
    )
    expect(page.locator("#use-grid-caption")).to_have_text(
        f"16 samples of {SHAPE} · checkpoint final (step 60) · seed 5"
    )
    shot(page, "22-sample-on-demand")
    shown = image_digests(grid)
    assert (shown["width"], shown["height"]) == (8 * 30 + 2, 2 * 30 + 2)  # 8 per row
    # What the page shows is the stored grid, byte for byte, and its .npz is listed beside it.
    key = grid.get_attribute("data-key") or ""
    assert key.startswith(f"jobs/{job_id}/samples-on-demand/") and key.endswith(".png")
    png = http.get(f"/v1/jobs/{job_id}/artifacts/{key.removeprefix(f'jobs/{job_id}/')}")
    assert hashlib.sha256(png.content).hexdigest() == shown["bytes"]
    files = page.locator("#use-sample-files li")
    expect(files).to_have_count(2)
    expect(files.nth(1)).to_contain_text(".npz")

    # The best checkpoint: another step's weights, said in the caption.
    best = http.get(f"/v1/jobs/{job_id}").json()["result"]["best"]
    form.get_by_label("checkpoint").select_option("best")
    form.get_by_role("button", name="Sample").click()
    expect(page.locator("#use-grid-caption")).to_have_text(
        f"16 samples of {SHAPE} · checkpoint best (step {best['step']}) · seed 5"
    )
    # A refused request: the API's message, the field it names marked.
    form.get_by_label("images").fill("2000")
    form.get_by_role("button", name="Sample").click()
    error = page.locator("#use-sample-error")
    expect(error).to_contain_text("field: n")
    expect(error).to_contain_text("HTTP 422 validation_error")
    expect(form.get_by_label("images")).to_have_attribute("aria-invalid", "true")
    shot(page, "23-sample-refused")


def test_a_slow_sample_answer_is_polled_until_it_comes(
    page: Page, base_url: str, token: str, finished_gans: tuple[str, str]
) -> None:
    """The API answers 202 with a poll URL when the inference worker takes longer than
    INFERENCE_WAIT_S: the page polls it until the answer. Here the real answer is held back
    by the browser (two 202s first), so the page's side is tested without a slow worker."""
    job_id, _ = finished_gans
    request_id = "f" * 32
    poll = f"/v1/inference/{request_id}"
    pending = {"request_id": request_id, "status": "pending", "poll": poll}
    held: dict[str, str] = {}
    polls: list[str] = []

    def on_samples(route: Route) -> None:
        held["body"] = route.fetch().text()
        route.fulfill(status=202, json=pending, headers={"Location": poll})

    def on_poll(route: Route) -> None:
        polls.append(route.request.url)
        if len(polls) < 3:
            route.fulfill(status=202, json=pending)
        else:
            route.fulfill(status=200, body=held["body"], content_type="application/json")

    page.route(f"**/v1/jobs/{job_id}/samples", on_samples)
    page.route(f"**{poll}", on_poll)
    sign_in(page, base_url, token)
    open_job(page, job_id)
    form = page.locator("#use-sample-form")
    form.get_by_label("images").fill("8")
    form.get_by_role("button", name="Sample").click()
    expect(page.locator("#use-grid")).to_have_attribute("data-n", "8")
    expect(page.locator("#use-grid-caption")).to_contain_text(f"8 samples of {SHAPE}")
    assert len(polls) == 3


def test_a_cgan_samples_the_label_chosen(
    page: Page, base_url: str, token: str, client: Client, http: httpx.Client
) -> None:
    spec = {**SMALL_GAN, "task": "cgan", "model": "conv_cgan", "max_steps": 20, "batch_size": 8}
    job = client.wait(client.submit(spec).id, timeout=240, poll=0.3)
    assert job.status == "succeeded", job.error
    sign_in(page, base_url, token)
    open_job(page, job.id)
    form = page.locator("#use-sample-form")
    label = form.get_by_label("label")
    expect(label.locator("option")).to_have_count(11)  # every label in turn, 0..9
    label.select_option("3")
    form.get_by_label("images").fill("8")
    form.get_by_role("button", name="Sample").click()
    expect(page.locator("#use-grid-caption")).to_have_text(
        f"8 samples of {SHAPE} · checkpoint final (step 20) · seed 0 · label 3"
    )
    key = page.locator("#use-grid").get_attribute("data-key") or ""
    npz = http.get(f"/v1/jobs/{job.id}/artifacts/{key.removeprefix(f'jobs/{job.id}/')[:-4]}.npz")
    with np.load(io.BytesIO(npz.content)) as saved:
        assert saved["labels"].tolist() == [3] * 8
        assert saved["images"].shape == (8, 1, 28, 28)


def _file(name: str, media_type: str, data: bytes) -> FilePayload:
    return {"name": name, "mimeType": media_type, "buffer": data}


def _digit_png(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, format="png")
    return buffer.getvalue()


def test_a_digit_dropped_or_chosen_on_a_finished_classifier_shows_its_probabilities(
    page: Page, base_url: str, token: str, finished_classifier: str, client: Client
) -> None:
    job_id = finished_classifier
    test = load_dataset("mnist-5k")
    x, y = test.test_x[::50].numpy(), test.test_y[::50].tolist()  # 2 of each class
    # Clear digits: ones the model names right with confidence (asked through the SDK).
    batch = io.BytesIO()
    np.savez(batch, x=x)
    answer = client.predict(job_id, batch.getvalue())
    clear = [
        i
        for i, (p, t) in enumerate(zip(answer.predicted, y, strict=True))
        if p == t and answer.probabilities[i][p] >= 0.9
    ]
    chosen, dropped = clear[0], next(i for i in clear if y[i] != y[clear[0]])

    sign_in(page, base_url, token)
    open_job(page, job_id)
    expect(page.locator("#use-predict")).to_be_visible()
    expect(page.locator("#use-sample")).to_be_hidden()  # a classifier: no sample button
    choose = page.locator("#use-predict-file")
    choose.set_input_files(files=_file("digit.png", "image/png", _digit_png(x[chosen, 0])))
    bars = page.locator("#use-bars li")
    expect(bars).to_have_count(10)
    top = page.locator("#use-bars li.is-top")
    expect(top).to_have_attribute("data-class", str(y[chosen]))
    expect(page.locator("#use-predict-summary")).to_have_attribute("data-predicted", str(y[chosen]))
    expect(page.locator("#use-predict-summary")).to_contain_text(f"digit.png: {y[chosen]} (p ")
    expect(page.locator("#use-predict-img")).to_be_visible()
    probabilities = [float(p) for p in bars.evaluate_all("li => li.map(l => l.dataset.p)")]
    assert probabilities == sorted(probabilities, reverse=True)
    assert abs(sum(probabilities) - 1) < 1e-4 and probabilities[0] >= 0.9
    shot(page, "24-predict-chosen")

    # Dropped on the zone, as a file dragged from the desktop arrives.
    page.locator("#use-predict-drop").evaluate(
        """(zone, bytes) => {
          const data = new DataTransfer();
          data.items.add(new File([new Uint8Array(bytes)], "dropped.png", { type: "image/png" }));
          zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: data, bubbles: true,
            cancelable: true }));
          zone.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true,
            cancelable: true }));
        }""",
        list(_digit_png(x[dropped, 0])),
    )
    expect(page.locator("#use-predict-summary")).to_contain_text(f"dropped.png: {y[dropped]} (p")
    expect(top).to_have_attribute("data-class", str(y[dropped]))
    shot(page, "25-predict-dropped")
    # Another checkpoint asks again about the same image.
    best = client.get(job_id).result or {}
    page.locator("#use-predict-form").get_by_label("checkpoint").select_option("best")
    summary = page.locator("#use-predict-summary")
    expect(summary).to_contain_text(f"checkpoint best (step {best['best']['step']})")
    expect(summary).to_contain_text("dropped.png: ")

    # An .npz batch: a line per image; a file that is no image: the API's message.
    choose.set_input_files(files=_file("batch.npz", "application/octet-stream", batch.getvalue()))
    expect(page.locator("#use-predict-batch li")).to_have_count(len(y))
    expect(page.locator("#use-predict-summary")).to_have_attribute("data-images", str(len(y)))
    expect(page.locator("#use-predict-img")).to_be_hidden()
    choose.set_input_files(files=_file("notes.txt", "text/plain", b"not an image"))
    error = page.locator("#use-predict-error")
    expect(error).to_contain_text("is not a PNG, a JPEG or an .npz")
    expect(error).to_contain_text("field: file")
    expect(page.locator("#use-predict-result")).to_be_hidden()


def save_docs_screenshot(page: Page) -> None:
    """The README's picture, from this run: the viewport of a finished GAN's page. The
    committed docs/dashboard-job.png comes from `python -m tests.e2e.docs_screenshot`, which
    trains longer so that the grid shows digits."""
    size = save_small_png(page, SHOTS / "dashboard-job.png")
    assert size <= DOCS_SHOT_MAX_BYTES, size
