"""The dashboard's files at "/" leave the API as it was: its routes, errors, redirects and
schema; and the files load nothing from elsewhere."""

from __future__ import annotations

import httpx

from services.api.routes.ui import STATIC_DIR


def test_the_page_and_its_files_are_served_with_a_strict_csp(base_url: str) -> None:
    page = httpx.get(base_url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    for name in (
        "app.js",
        "api.js",
        "sse.js",
        "chart.js",
        "jobs.js",
        "job.js",
        "dom.js",
        "inference.js",
        "sweeps.js",
    ):
        response = httpx.get(f"{base_url}/{name}")
        assert response.status_code == 200, name
        assert "javascript" in response.headers["content-type"], name
    assert httpx.get(base_url + "/app.css").headers["content-type"].startswith("text/css")


def test_the_files_load_nothing_from_elsewhere_and_have_no_inline_handlers() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/", ""), path.name
        assert "https://" not in text, path.name
        assert " on" + "click=" not in text and " on" + "load=" not in text, path.name
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text, path.name


def test_api_paths_keep_their_own_answers(base_url: str) -> None:
    with httpx.Client(base_url=base_url, follow_redirects=False) as anonymous:
        assert "/" not in anonymous.get("/openapi.json").json()["paths"]
        assert anonymous.get("/docs").status_code == 200
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.get("/v1/jobs").status_code == 401  # the API's auth, not a file
        missing = anonymous.get("/v1/no-such-route")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert anonymous.delete("/v1/jobs").status_code == 405
        assert anonymous.get("/v1/jobs/").status_code == 307  # the router's slash redirect
        unknown = anonymous.get("/no-such-file.js")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        assert anonymous.post("/").status_code == 404  # the UI answers GET and HEAD only
