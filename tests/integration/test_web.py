"""The web view in a real headless browser (Debian's chromium through chromium-driver):
the overview, the at-risk list, a customer page and a segment load without console errors
and show the numbers the API gives. Screenshots are kept in ``.artifacts/screenshots/``.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from contract.events import build_event
from processors import human
from retention import queries
from retention.api_keys import KeyStore
from retention.config import Settings
from retention.ingest import IngestServer
from store.evaluations import stored_evaluations
from store.ingest_state import IngestState
from store.store import Store
from streams.producer import EventProducer
from tests.integration.conftest import Workers, wait_until

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".artifacts" / "screenshots"
NOW = datetime.now(UTC).replace(microsecond=0)
INSTALL = "install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"


def shop() -> list[dict[str, Any]]:
    """Regular buyers, lapsed ones, quiet ones and an unhappy one, over half a year."""
    events: list[dict[str, Any]] = []
    for c in range(24):
        cid = f"w-{c:02d}"
        last = (3, 45, 120, 10)[c % 4]
        for n in range(2 + c % 5):
            when = NOW - timedelta(days=last + 11 * n)
            events.append(
                {
                    "event_id": f"{cid}-{n}",
                    "customer_id": cid,
                    "ts": when.isoformat(),
                    "type": "order",
                    "amount": 20 + c + 3 * n,
                    "country": ("DE", "FR")[c % 2],
                }
            )
    events.append(
        {
            "event_id": "w-03-s",
            "customer_id": "w-03",
            "ts": (NOW - timedelta(days=1)).isoformat(),
            "type": "support",
            "ticket_id": "t1",
            "action": "rated",
            "survey": "csat",
            "score": 1,
        }
    )
    return events


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail(f"no chromium or chromedriver: {INSTALL}", pytrace=False)
    options = Options()
    options.binary_location = chromium
    # as root in a container: no sandbox, and /tmp instead of a small /dev/shm
    flags = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")
    for arg in (*flags, "--window-size=1280,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as exc:
        pytest.fail(f"chromium did not start ({exc.msg}): {INSTALL}", pytrace=False)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
async def site(settings: Settings, redis: Redis) -> AsyncIterator[tuple[str, str]]:
    key = await KeyStore(IngestState(redis, settings.key_prefix)).create("eyes", ["read"])
    server = IngestServer(settings.model_copy(update={"ingest_key_cache_seconds": 0}), port=0)
    await server.start()
    yield server.url, key
    await server.stop()


def visit(driver: webdriver.Chrome, url: str, key: str, shot: str) -> None:
    """Open ``url`` with the key, keep a screenshot, and require a clean console."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {key}"}}
    )
    driver.get(url)
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{shot}.png"))
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def kpi(driver: webdriver.Chrome, name: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, f'[data-name="{name}"] b').text)


async def api(url: str, key: str) -> Any:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_the_pages_show_what_the_api_says(
    settings: Settings,
    store: Store,
    producer: EventProducer,
    workers: Workers,
    site: tuple[str, str],
    browser: webdriver.Chrome,
) -> None:
    url, key = site
    for raw in shop():
        await producer.send(build_event(raw))
    await producer.flush()
    workers.start()

    async def evaluated() -> bool:
        ids = await store.customer_ids()
        return len(ids) == 24 and len(await stored_evaluations(store, ids)) == 24

    await wait_until(evaluated, 90, "every customer evaluated", workers.logs)

    # a page without a key is refused, and asks for one
    async with aiohttp.ClientSession() as session, session.get(url + "/") as resp:
        assert resp.status == 401 and "Basic" in resp.headers["WWW-Authenticate"]

    metrics = await api(f"{url}/v1/metrics?period=month", key)
    await asyncio.to_thread(visit, browser, url + "/", key, "overview")
    assert kpi(browser, "active this month") == str(metrics["active_customers"]["month"])
    current = metrics["periods"][-1]
    assert kpi(browser, "revenue this month") == human.money(current["revenue"], "USD")
    at_risk = await queries.at_risk(settings, 1000)
    assert kpi(browser, "customers at risk") == str(len(at_risk))
    assert browser.find_elements(By.CSS_SELECTOR, "svg rect")  # the charts drew bars
    cohorts = await api(f"{url}/v1/cohorts?period=month", key)
    newest = cohorts["cohorts"][max(cohorts["cohorts"])]
    assert "revenue k months later" in browser.page_source
    assert human.money(newest["revenue"][0], "USD") in browser.page_source

    await asyncio.to_thread(visit, browser, url + "/at-risk", key, "at-risk")
    listed = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "tbody td:first-child a")]
    assert listed == [str(r["customer_id"]) for r in at_risk][:50]
    assert "usually orders every" in browser.page_source or "rating" in browser.page_source

    first = listed[0]
    view = await api(f"{url}/v1/customers/{first}", key)
    await asyncio.to_thread(visit, browser, f"{url}/customers/{first}", key, "customer")
    assert kpi(browser, "CLTV") == human.money(view["cltv"], "USD")
    assert kpi(browser, "band") == (view["band"] or "-")
    assert kpi(browser, "orders") == str(view["orders"])
    assert kpi(browser, "country") == view["attributes"]["country"]["latest"]
    for item in view["evidence"]:
        assert item["text"] in browser.page_source
    # the alerts raised about them, with their outcome so far
    alerts = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "table:last-of-type td")]
    assert "at_risk" in alerts and "pending" in alerts, alerts

    # every member, page after page, as the API's cursor walk finds them
    members: set[str] = set()
    cursor = ""
    while True:
        found = await api(f"{url}/v1/customers?segment=churned&limit=1000{cursor}", key)
        members |= {r["customer_id"] for r in found["customers"]}
        if found["next_cursor"] is None:
            break
        cursor = f"&cursor={found['next_cursor']}"
    assert members
    shown: set[str] = set()
    address = f"{url}/segments/churned"
    for _ in range(1000):
        await asyncio.to_thread(visit, browser, address, key, "segment-churned")
        shown |= {a.text for a in browser.find_elements(By.CSS_SELECTOR, "tbody td:first-child a")}
        links = [
            a.get_attribute("href") for a in browser.find_elements(By.PARTIAL_LINK_TEXT, "CSV")
        ]
        assert links and "segment=churned" in str(links[0])
        following = browser.find_elements(By.ID, "next")
        if not following:
            break
        address = str(following[0].get_attribute("href"))
    assert shown == members
