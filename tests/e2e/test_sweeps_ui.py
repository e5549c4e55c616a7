"""The dashboard's sweep pages in Debian's chromium against a real stack: a tiny sweep submitted
over the API shows live in the list and on its page; the trial table sorts by any column and
marks the best trial; one scatter per parameter (a log axis for a log-scale one); ticked
trials' curves overlaid; the cancel button stops a running sweep. Every wait polls the page."""

from __future__ import annotations

import math
import re
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.e2e.browser import JOB_TIMEOUT_MS, shot, sign_in

# Three tiny classifier trials (20 steps, a loss point every 5): lr on a log scale, the seed
# as an integer; the random sampler draws them.
TINY_SWEEP: dict[str, Any] = {
    "name": "e2e <b>sweep</b>",  # shown as text, never as markup
    "base": {"task": "classifier", "max_steps": 20, "log_every": 5},
    "space": {
        "lr": {"type": "float", "low": 0.001, "high": 0.05, "log": True},
        "seed": {"type": "int", "low": 0, "high": 100},
    },
    "n_trials": 3,
    "sampler": "random",
    "parallel": 3,
    "seed": 7,
}
SWEEP_TIMEOUT_MS = 2 * JOB_TIMEOUT_MS  # three small jobs on one shared worker


def open_sweep(page: Page, sweep_id: str) -> None:
    page.goto(f"{page.url.split('#')[0]}#/sweeps/{sweep_id}")
    expect(page.locator("#sweep-id")).to_have_text(sweep_id)


def cell_values(page: Page, key: str) -> list[str]:
    """The text of column `key` ("value", "param:lr", ...), top to bottom."""
    columns = page.locator("#trials-table thead th").evaluate_all(
        "ths => ths.map(th => th.dataset.key || '')"
    )
    index = columns.index(key)
    texts: list[str] = page.locator(
        f"#trials-table tbody tr td:nth-child({index + 1})"
    ).evaluate_all("tds => tds.map(td => td.textContent.trim())")
    return texts


def test_a_sweep_shows_its_trials_best_scatters_and_curves(
    page: Page, base_url: str, token: str, http: httpx.Client
) -> None:
    submitted = http.post("/v1/sweeps", json=TINY_SWEEP)
    assert submitted.status_code == 201, submitted.text
    sweep_id = submitted.json()["id"]

    sign_in(page, base_url, token)
    page.get_by_role("link", name="sweeps").click()
    row = page.locator(f"#sweeps-table tr[data-sweep-id='{sweep_id}']")
    expect(row).to_contain_text("e2e <b>sweep</b>")
    expect(row).to_contain_text("classifier")
    row.get_by_role("link", name=sweep_id).click()
    expect(page.locator("#sweep-id")).to_have_text(sweep_id)
    expect(page.locator("#sweep-name")).to_have_text("e2e <b>sweep</b>")

    # Live: the page follows the sweep from running to finished without a reload.
    status = page.locator("#sweep-status")
    expect(status).to_have_text("finished", timeout=SWEEP_TIMEOUT_MS)
    sweep = http.get(f"/v1/sweeps/{sweep_id}").json()
    assert sweep["status"] == "finished", sweep
    assert [t["status"] for t in sweep["trials"]] == ["succeeded"] * 3, sweep["trials"]
    best = sweep["best"]
    assert best is not None, sweep
    expect(page.get_by_role("button", name="Cancel sweep")).to_be_hidden()

    rows = page.locator("#trials-table tbody tr")
    expect(rows).to_have_count(3)
    marked = page.locator("#trials-table tbody tr[data-best='true']")
    expect(marked).to_have_count(1)
    expect(marked).to_have_attribute("data-job-id", best["job_id"])
    expect(marked).to_contain_text("best")
    expect(page.locator("#sweep-best")).to_contain_text(f"trial {best['trial']}")
    shot(page, "sweep-01-finished")

    # Sort by the metric: ascending, then descending (best first, as it maximises accuracy).
    metric = sweep["metric"]["name"]
    header = page.locator("#trials-table thead th[data-key='value']")
    expect(header).to_have_text(re.compile(metric))
    header.get_by_role("button").click()
    expect(header).to_have_attribute("aria-sort", "ascending")
    shown = [float(v) for v in cell_values(page, "value")]
    assert shown == sorted(shown), shown
    header.get_by_role("button").click()
    expect(header).to_have_attribute("aria-sort", "descending")
    shown = [float(v) for v in cell_values(page, "value")]
    assert shown == sorted(shown, reverse=True), shown
    values = {t["job_id"]: t["value"] for t in sweep["trials"]}
    first = rows.first.get_attribute("data-job-id")
    assert first is not None and math.isclose(values[first], max(values.values()))
    # Any column sorts: the seed, a parameter.
    seed_header = page.locator("#trials-table thead th[data-key='param:seed']")
    seed_header.get_by_role("button").click()
    expect(seed_header).to_have_attribute("aria-sort", "ascending")
    seeds = [int(v.replace(",", "")) for v in cell_values(page, "param:seed")]
    assert seeds == sorted(seeds) and sorted(seeds) == sorted(
        t["params"]["seed"] for t in sweep["trials"]
    )

    # One scatter per parameter, every trial on each; lr on a log axis.
    scatters = page.locator("#scatters figure.scatter")
    expect(scatters).to_have_count(2)
    lr_plot = page.locator("#scatters figure[data-param='lr']")
    expect(lr_plot).to_have_attribute("data-scale", "log")
    expect(lr_plot).to_have_attribute("data-points", "3")
    expect(lr_plot.locator("circle.dot")).to_have_count(3)
    expect(lr_plot.locator("circle.dot.best")).to_have_count(1)
    seed_plot = page.locator("#scatters figure[data-param='seed']")
    expect(seed_plot).to_have_attribute("data-scale", "linear")
    expect(seed_plot.locator("circle.dot")).to_have_count(3)

    # Tick two trials: two curves on each chart, one series per trial job.
    ticked = [rows.nth(0), rows.nth(2)]
    for row_ in ticked:
        row_.get_by_role("checkbox").check()
    ids = sorted(r.get_attribute("data-job-id") or "" for r in ticked)
    loss = page.locator("#curves figure[data-chart='loss']")
    expect(loss.locator("polyline")).to_have_count(2)
    assert (
        sorted(loss.locator("polyline").evaluate_all("lines => lines.map(l => l.dataset.series)"))
        == ids
    )
    # A point every 5 steps: 4 of each trial's 20 (packed or not, each logs its own).
    expect(loss).to_have_attribute("data-points", "8")
    per_epoch = page.locator("#curves figure[data-chart='metric']")
    expect(per_epoch.locator("polyline")).to_have_count(2)  # its evaluation(s) per trial
    shot(page, "sweep-02-sorted-scatters-curves")
    rows.nth(2).get_by_role("checkbox").uncheck()
    expect(loss.locator("polyline")).to_have_count(1)

    # Each trial links to its job's page.
    marked.get_by_role("link", name=f"#{best['trial']}").click()
    expect(page.locator("#job-id")).to_have_text(best["job_id"])


def test_the_cancel_button_stops_a_running_sweep(
    page: Page, base_url: str, token: str, http: httpx.Client
) -> None:
    long = {
        **TINY_SWEEP,
        "name": "e2e sweep to cancel",
        "base": {"task": "classifier", "max_steps": 1_000_000},
        "n_trials": 2,
        "parallel": 1,
    }
    submitted = http.post("/v1/sweeps", json=long)
    assert submitted.status_code == 201, submitted.text
    sweep_id = submitted.json()["id"]
    sign_in(page, base_url, token)
    open_sweep(page, sweep_id)
    expect(page.locator("#sweep-status")).to_have_text("running")
    page.get_by_role("button", name="Cancel sweep").click()
    expect(page.locator("#sweep-status")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel sweep")).to_be_hidden()
    # Its trials stop (a queued one at once, a running one at its next step).
    page.wait_for_function(
        """() => {
          const rows = [...document.querySelectorAll('#trials-table tbody tr')]
            .filter(r => r.dataset.jobId);
          return rows.length > 0 && rows.every(r => r.dataset.status === 'cancelled');
        }""",
        timeout=JOB_TIMEOUT_MS,
    )
    shot(page, "sweep-03-cancelled")
    sweep = http.get(f"/v1/sweeps/{sweep_id}").json()
    assert sweep["status"] == "cancelled"
    assert all(t["status"] == "cancelled" for t in sweep["trials"] if t["job_id"]), sweep
