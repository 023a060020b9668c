"""The explorer page, /docs and /redoc in a real browser: Debian's Chromium driven by Playwright.

`mosaic serve --model tiny-random` runs as a subprocess (embedded worker and Redis, API keys on: a
platform key and an advertiser key);
the browser context refuses every request that is not to the loopback gateway, so the pages are
proven to work offline. Checks: the page runs an auction and its candidate table holds exactly the
API's candidates (index, text, probability, sorted by probability); moving the τ slider redraws the
probabilities to exactly what `POST /auctions/{id}/resolve` answers for that τ; the key survives a
reload (sessionStorage) and `#auction=<id>` reopens the auction; an unknown id shows the API's
message; with an advertiser key the page shows her sealed view (her row, her rewards, the others'
summed, nothing of another advertiser) and its τ slider her sealed what-if; the disclosure label (hers
in the sealed view: the others counted, not named) shows above the reply, and each sponsor's /why;
Swagger UI and ReDoc render the operations, and Swagger's Authorize + "Try it out" runs an
auction with its default example body (200). Screenshots go to the test's tmp_path (and to
MOSAIC_SCREENSHOTS_DIR when set: `MOSAIC_SCREENSHOTS_DIR=docs/img .venv/bin/pytest <this file>`
regenerates the README's). The "What to bid" panel runs test auctions (never billed) and plots
exactly what `POST /calibration` answers on their stored candidates.

The browser is /usr/bin/chromium (`make chromium` installs it; no browser download). Without it the
test is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.fixtures_worker import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
API_KEY = "browser-test-platform-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADVERTISER_KEY = "browser-test-alpha-key"

pytestmark = pytest.mark.slow

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser_path() -> str:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} missing: `make chromium` installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} missing (`make chromium`)")
    return CHROMIUM


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("explorer-data")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "WORKER_URLS", "HOST", "PORT"}}
    env.update({"DATA_DIR": str(data), "API_KEYS": API_KEY, "LOG_LEVEL": "WARNING"})
    env["ADVERTISER_API_KEYS"] = json.dumps({"alpha7": [ADVERTISER_KEY]})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    log = (data / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--model", "tiny-random", "--port", str(port)],
        cwd=data,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"gateway exited: {(data / 'gateway.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail("gateway not ready in 240 s")
            time.sleep(0.3)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        log.close()


@pytest.fixture
def page(browser_path: str, gateway: str, tmp_path: Path) -> Iterator[tuple[Any, list[str], list[str]]]:
    """A page whose context lets through loopback requests only; (page, blocked urls, page errors)."""
    blocked: list[str] = []
    errors: list[str] = []

    def only_loopback(route: Any) -> None:
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith("data:") or host in {"127.0.0.1", "localhost"}:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=browser_path, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.route("**/*", only_loopback)
        current = context.new_page()
        current.on("pageerror", lambda error: errors.append(str(error)))
        try:
            yield current, blocked, errors
        finally:
            context.close()
            browser.close()


def _shot(page: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("MOSAIC_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)


def _rows(page: Any) -> list[tuple[int, float, str]]:
    rows = page.locator("#candidate-table tbody tr")
    return [
        (
            int(rows.nth(i).get_attribute("data-index")),
            float(rows.nth(i).get_attribute("data-probability")),
            rows.nth(i).locator("td.text").inner_text(),
        )
        for i in range(rows.count())
    ]


def _assert_disclosure_above_the_reply(current: Any, disclosure: dict[str, Any], why: dict[str, Any]) -> None:
    """The page shows the answer's disclosure label as is above the reply (or why it is not sponsored),
    and the /why of each sponsor (`why`: what `GET /auctions/{id}/why` answers the same key)."""
    line = current.locator("#disclosure")
    if disclosure["label"]:
        assert line.inner_text() == disclosure["label"] and disclosure["label"].startswith("Sponsored · ")
    else:
        assert line.inner_text().startswith("Not sponsored")
    assert line.get_attribute("data-sponsored") == str(disclosure["sponsored"]).lower()
    assert line.bounding_box()["y"] < current.locator("#reply").bounding_box()["y"]
    rows = current.locator("#why-table tbody tr")
    assert [rows.nth(i).get_attribute("data-sponsor") for i in range(rows.count())] == [
        sponsor["id"] for sponsor in why["sponsors"]
    ]
    for i, sponsor in enumerate(why["sponsors"]):
        assert rows.nth(i).get_attribute("data-basis") == sponsor["basis"]
        assert rows.nth(i).locator("td").nth(1).inner_text() == sponsor["reason"]
    assert current.locator("#why").is_visible() == disclosure["sponsored"]


def _why(gateway: str, auction_id: str, headers: dict[str, str]) -> dict[str, Any]:
    answer = httpx.get(f"{gateway}/auctions/{auction_id}/why", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    result: dict[str, Any] = answer.json()
    return result


def _fill_form(
    current: Any, gateway: str, instance: int, candidates: int, max_tokens: int, seed: int
) -> None:
    """Open the page, type the platform key, prefill an instance and set M, max tokens and the seed."""
    current.goto(f"{gateway}/")
    current.wait_for_selector("body[data-ready=true]")
    current.fill("#api-key", API_KEY)
    current.select_option("#instance", index=instance)
    current.fill("#candidates", str(candidates))
    current.fill("#max-tokens", str(max_tokens))
    current.fill("#seed", str(seed))


def test_explorer_runs_an_auction_and_the_tau_slider_resolves(
    page: tuple[Any, list[str], list[str]], gateway: str, tmp_path: Path
) -> None:
    current, blocked, errors = page
    _fill_form(current, gateway, instance=1, candidates=5, max_tokens=12, seed=7)
    current.click("#run")
    current.wait_for_selector("#status[data-state=done]", timeout=120_000)
    auction_id = current.locator("#auction-id").inner_text()
    record = httpx.get(f"{gateway}/auctions/{auction_id}", headers=AUTH, timeout=30).json()
    candidates = record["candidates"]
    assert record["request"]["query"] == "Best skin care routine for dry skin."
    _assert_disclosure_above_the_reply(current, record["disclosure"], _why(gateway, auction_id, AUTH))
    sponsors = {row["id"] for row in record["advertisers"] if record["payments_micro"][row["id"]] >= 1}
    assert {s["id"] for s in record["disclosure"]["sponsors"]} == sponsors and sponsors

    rows = _rows(current)
    assert sorted(index for index, _, _ in rows) == list(range(len(candidates))) and len(rows) == 5
    for index, probability, text in rows:
        assert probability == candidates[index]["probability"]  # JS shortest round-trip = Python's
        assert text == candidates[index]["text"].strip() or text.strip() == candidates[index]["text"].strip()
    shown = [probability for _, probability, _ in rows]
    assert shown == sorted(shown, reverse=True)
    _shot(current, tmp_path, "explorer-auction.png")

    current.locator("#tau-slider").fill("0.5")  # τ = 10^0.5, shown to three digits
    current.wait_for_selector('#result[data-tau="3.16"]', timeout=30_000)
    current.wait_for_selector("#status[data-state=resolved]")
    what_if = httpx.post(
        f"{gateway}/auctions/{auction_id}/resolve", json={"tau": 3.16}, headers=AUTH, timeout=30
    ).json()
    for index, probability, _ in _rows(current):
        assert probability == what_if["probabilities"][index]
    advertiser_rows = current.locator("#advertiser-table tbody tr")
    assert advertiser_rows.count() == len(what_if["advertisers"])
    _shot(current, tmp_path, "explorer-whatif.png")

    current.reload()  # the key stays for the tab; #auction=<id> reopens the auction
    current.wait_for_selector("body[data-ready=true]")
    assert current.input_value("#api-key") == API_KEY
    current.wait_for_selector("#status[data-state=done]")
    assert [row[0] for row in _rows(current)] == [row[0] for row in rows]

    current.fill("#open-id", "0123456789abcdef")
    current.click("#open")
    current.wait_for_selector("#status[data-state=error]")
    assert "HTTP 404: auction '0123456789abcdef' not found" in current.locator("#error").inner_text()
    assert not errors, errors
    assert not blocked, blocked


def test_explorer_shows_which_campaigns_a_select_auction_considered_and_why(
    page: tuple[Any, list[str], list[str]], gateway: str, tmp_path: Path
) -> None:
    """Invariant: with `select`, the page lists every campaign the selection considered with the
    relevance, selected or the reason it was left out, as the answer says; a sensitive query shows its
    no-fill reason."""
    current, blocked, errors = page
    for campaign_id, owner, description in (
        ("ex-skin", "hydraskin", "providing moisturizers and serums for dry skin"),
        ("ex-guitar", "strummaster", "selling guitars, tuners, and learning materials for beginners"),
    ):
        body = {
            "id": campaign_id,
            "owner": owner,
            "name": owner.title(),
            "description": description,
            "budget": {"total_micro": 10**12},
        }
        assert httpx.post(f"{gateway}/campaigns", json=body, headers=AUTH, timeout=30).status_code == 201
    _fill_form(current, gateway, instance=1, candidates=3, max_tokens=8, seed=3)  # dry skin
    current.check("#use-select")
    current.fill("#select-max", "1")
    current.click("#run")
    current.wait_for_selector("#status[data-state=done]", timeout=180_000)
    auction_id = current.locator("#auction-id").inner_text()
    record = httpx.get(f"{gateway}/auctions/{auction_id}", headers=AUTH, timeout=30).json()
    considered = {c["campaign_id"]: c for c in record["selection"]["considered"]}
    assert considered["ex-skin"]["selected"] and not considered["ex-guitar"]["selected"]
    shown = current.locator("#selection-table tbody tr")
    assert shown.count() == len(considered)
    row = current.locator('#selection-table tbody tr[data-campaign="ex-guitar"] td')
    assert row.nth(5).inner_text() == (considered["ex-guitar"]["reason"] or "")
    assert (
        current.locator('#selection-table tbody tr[data-campaign="ex-skin"]').get_attribute("data-selected")
        == "true"
    )
    why = _why(gateway, auction_id, AUTH)
    _assert_disclosure_above_the_reply(current, record["disclosure"], why)
    assert all(sponsor["basis"] == "selected" for sponsor in why["sponsors"])
    assert [s["name"] for s in record["disclosure"]["sponsors"]] in ([], ["Hydraskin"])
    _shot(current, tmp_path, "explorer-selection.png")

    current.fill("#query", "I have been feeling depressed and hopeless, what should I do?")
    current.click("#run")
    current.wait_for_selector("#status[data-state=done]", timeout=180_000)
    assert "no-fill: sensitive_topic" in current.locator("#selection-note").inner_text()
    assert current.locator("#disclosure").inner_text() == "Not sponsored (no-fill: nobody bid)"
    assert current.locator("#disclosure").get_attribute("data-sponsored") == "false"
    assert not errors, errors
    assert not blocked, blocked


def test_what_to_bid_plots_the_calibration_of_its_test_auctions(
    page: tuple[Any, list[str], list[str]], gateway: str, tmp_path: Path
) -> None:
    """The "What to bid" panel runs test auctions (never billed) for the form's first advertiser on
    the form's query and the paper's next ones, then plots exactly what `POST /calibration` answers on
    those auctions' stored candidates (every point's cost per 1,000) and shows the solved value scale."""
    current, blocked, errors = page
    _fill_form(current, gateway, instance=0, candidates=3, max_tokens=6, seed=5)
    current.fill("#bid-queries", "2")
    current.fill("#bid-target", "5")
    current.click("#bid-run")
    current.wait_for_selector("#status[data-state=calibrated]", timeout=180_000)
    panel = current.locator("#bid")
    auction_ids = (panel.get_attribute("data-auctions") or "").split(",")
    assert len(auction_ids) == 2
    records = [httpx.get(f"{gateway}/auctions/{aid}", headers=AUTH, timeout=30).json() for aid in auction_ids]
    assert [r["request"]["query"] for r in records] == [
        "Learning to play the guitar.",
        "Best skin care routine for dry skin.",
    ]
    assert all(r["billing"] == "test" and len(r["request"]["advertisers"]) == 1 for r in records)
    points = current.locator("#bid-plot circle.point")
    scales = [float(points.nth(i).get_attribute("data-value-scale")) for i in range(points.count())]
    assert 1.0 in scales and len(scales) >= 10
    answer = httpx.post(
        f"{gateway}/calibration",
        json={
            "advertiser": "strummaster",
            "auctions": [
                {"tau": r["tau"], "value_scale": 1.0, "candidates": r["candidates"]} for r in records
            ],
            "value_scales": scales,
            "target_cpm_micro": 5_000_000,
        },
        headers=AUTH,
        timeout=60,
    ).json()
    shown = [float(points.nth(i).get_attribute("data-cost")) for i in range(points.count())]
    assert shown == [point["cost_per_1000"] for point in answer["curve"]]
    assert answer["target"]["reached"]
    assert float(panel.get_attribute("data-value-scale")) == answer["target"]["value_scale"]
    assert current.locator("#bid-solution").count() == 1
    summary = current.locator("#bid-summary").inner_text()
    assert "For 5.00 USD per 1,000: value scale" in summary and "never billed" in summary
    _shot(current, tmp_path, "explorer-what-to-bid.png")
    assert not errors, errors
    assert not blocked, blocked


def test_explorer_with_an_advertiser_key_shows_her_sealed_view(
    page: tuple[Any, list[str], list[str]], gateway: str, tmp_path: Path
) -> None:
    """An advertiser key opening an auction she shared: only her row and rewards, the others' rewards
    summed, no other advertiser's id, entry or figures on the page; the slider resolves her what-if."""
    current, blocked, errors = page
    secret = {
        "id": "bravo7",
        "name": "Bravoqz",
        "description": "bravo-secret-description",
        "instruction": "BRAVO-SECRET-INSTRUCTION: mention Bravoqz.",
        "value_scale": 0.0725,
    }
    body = {
        "query": "Learning to play the guitar.",
        "advertisers": [
            {"id": "alpha7", "name": "Alphaqz", "description": "alpha lessons", "value_scale": 0.015},
            secret,
        ],
        "candidates": 4,
        "max_tokens": 6,
        "seed": 3,
    }
    served = httpx.post(f"{gateway}/auction", json=body, headers=AUTH, timeout=120)
    assert served.status_code == 200, served.text
    auction_id = served.json()["auction_id"]
    mine = {"Authorization": f"Bearer {ADVERTISER_KEY}"}
    view = httpx.get(f"{gateway}/auctions/{auction_id}", headers=mine, timeout=30).json()
    assert view["view"] == "sealed"

    current.goto(f"{gateway}/")
    current.wait_for_selector("body[data-ready=true]")
    current.fill("#api-key", ADVERTISER_KEY)
    current.fill("#open-id", auction_id)
    current.click("#open")
    current.wait_for_selector("#status[data-state=done]", timeout=30_000)
    current.wait_for_selector("#result[data-view=sealed]")
    advertiser_rows = current.locator("#advertiser-table tbody tr")
    assert advertiser_rows.count() == 1 and advertiser_rows.first.get_attribute("data-advertiser") == "alpha7"
    heads = current.locator("#candidate-table thead th").all_inner_texts()
    assert "r: alpha7" in heads and "Σ r: others" in heads
    rows = _rows(current)
    for index, probability, _ in rows:
        assert probability == view["candidates"][index]["probability"]
    shown = current.locator("#result").inner_text()
    texts = [view["reply"], *(c["text"] for c in view["candidates"])]
    for field in ("id", "name", "description", "instruction"):
        assert secret[field] not in shown or any(secret[field] in text for text in texts), field
    assert "revenue" not in current.locator("#summary").inner_text()
    _assert_disclosure_above_the_reply(
        current, view["disclosure"], _why(gateway, auction_id, mine)
    )  # hers: the other counted, not named
    others = [s for s in served.json()["disclosure"]["sponsors"] if s["id"] != "alpha7"]
    assert view["disclosure"]["other_sponsors"] == len(others)
    assert current.locator("#timings").is_hidden()
    _shot(current, tmp_path, "explorer-sealed.png")

    current.locator("#tau-slider").fill("0.5")
    current.wait_for_selector('#result[data-tau="3.16"]', timeout=30_000)
    current.wait_for_selector("#status[data-state=resolved]")
    what_if = httpx.post(
        f"{gateway}/auctions/{auction_id}/resolve", json={"tau": 3.16}, headers=mine, timeout=30
    ).json()
    assert what_if["view"] == "sealed"
    for index, probability, _ in _rows(current):
        assert probability == what_if["probabilities"][index]
    assert current.locator("#advertiser-table tbody tr").count() == 1
    assert "bravo7" not in current.locator("#result").inner_text()
    assert not errors, errors
    assert not blocked, blocked


def test_docs_render_offline(page: tuple[Any, list[str], list[str]], gateway: str, tmp_path: Path) -> None:
    current, blocked, errors = page
    current.goto(f"{gateway}/docs")
    current.wait_for_selector(".opblock", timeout=60_000)
    text = current.locator("body").inner_text()
    for operation in ("run_auction", "get_auction", "resolve_auction"):
        assert operation in text, operation
    assert current.locator(".btn.authorize").count() == 1  # the bearer scheme: Authorize
    assert current.locator(".opblock").count() >= 7
    # Authorize with the key, then "Try it out" → Execute on POST /auction with Swagger's default
    # example body: it validates, and the key is sent (200, not 401 or 422).
    current.click(".btn.authorize")
    current.fill(".auth-container input", API_KEY)
    current.click(".auth-btn-wrapper .btn.modal-btn.auth.authorize")
    current.click(".btn-done")
    operation = current.locator("#operations-auction-run_auction")
    operation.locator(".opblock-summary").click()
    operation.locator(".btn.execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=120_000)
    assert status.inner_text().strip().startswith("200"), operation.locator(
        ".live-responses-table"
    ).inner_text()
    _shot(current, tmp_path, "docs-swagger.png")
    current.goto(f"{gateway}/redoc")
    current.locator("h2", has_text="What-if").first.wait_for(timeout=60_000)  # an operation rendered
    _shot(current, tmp_path, "docs-redoc.png")
    assert not errors, errors
    assert not blocked, blocked
