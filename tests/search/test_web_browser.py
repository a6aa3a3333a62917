"""The page at ``/`` driven in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``
through selenium) against a real server on 127.0.0.1 with a token set, over a run of the tiny model
whose latencies were measured on this machine (conftest's ``profiles``).

Skipped, saying why, where chromium/chromedriver or selenium are missing (CI installs them).
``AMOEBA_WEB_SCREENSHOT=path.png`` also saves the page's screenshot there. docs/web-front.png is
the screenshot of a real run (``test_screenshot_of_a_run``, which runs only when ``AMOEBA_WEB_RUN``
names a run folder; profiles from ``AMOEBA_PROFILES``; the view, e.g. ``device=cpu-host&flow=pytorch&budget=40``,
from ``AMOEBA_WEB_VIEW``)::

    AMOEBA_WEB_RUN=runs/smollm2 AMOEBA_WEB_SCREENSHOT=docs/web-front.png \
        python -m pytest -q tests/search/test_web_browser.py -k screenshot_of_a_run
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.search.test_service import _serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[fleet]')")

TOKEN = "pa$$ w/ord"  # characters that must survive the URL fragment
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1080")


@pytest.fixture(scope="module")
def web_run(profiles: Path, strategy_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the 8 shapes whose latencies ``profiles`` measured (depths 1-4 x widths 1, 0.5).

    The accuracies are test inputs, not scores: the tiny random model scores top-1 0.0 on every
    shape (a one-point front). Ranked by measured latency, shape k gets 0.30 + 0.04 k when k is
    even and 0.02 less than the shape before it when k is odd, so the front is the 4 even-ranked
    shapes and the 4 others are evaluated but dominated, whatever order the timings come in.
    """
    from search.objectives import AccuracyRecord, AccuracyTable
    from search.latency import LatencyObjective
    from search.query import write_meta
    from search.space import SearchSpace

    run = tmp_path_factory.mktemp("web-runs") / "tiny"
    space = SearchSpace.from_strategy(strategy_path, model="tiny", widths=(1.0, 0.5))
    write_meta(run, space)
    lat = LatencyObjective("cpu-host", "pytorch", "tiny", "decode", root=profiles)
    shapes = sorted(space.shapes(), key=lambda s: lat(s).ms)
    table, acc = AccuracyTable(run / "accuracy.parquet"), 0.0
    for k, s in enumerate(shapes):
        assert lat(s).source == "measured"
        acc = 0.30 + 0.04 * k if k % 2 == 0 else acc - 0.02
        table.put(AccuracyRecord(space.fingerprint, s.key, s.depth, s.width, acc, ppl=10.0 / acc))
    return run


@pytest.fixture(scope="module")
def url(web_run: Path, profiles: Path) -> Iterator[str]:
    yield from _serve(web_run, profiles, TOKEN)


@pytest.fixture(scope="module")
def api(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for f in FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def _wait(browser: Any, cond: Any, what: str, timeout: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.05).until(cond)
    except Exception as e:
        logs = [m["message"] for m in browser.get_log("browser")]
        raise AssertionError(f"page never showed {what}; error line: "
                             f"{browser.find_element('id', 'error').text!r}; console: {logs}") from e


def _answer(browser: Any, budget: float | None = None) -> dict[str, str]:
    """The answer panel once it shows the answer for ``budget`` (any budget when None)."""
    def ready(b: Any) -> dict[str, str] | bool:
        box = b.find_element("id", "answer")
        if box.get_attribute("data-state") != "ready":
            return False
        if budget is not None and float(box.get_attribute("data-budget")) != budget:
            return False
        return {k: box.get_attribute(f"data-{k}") for k in ("budget", "key", "feasible")} | {
            k: b.find_element("id", f"ans-{k}").text for k in ("shape", "acc", "lat", "source", "export")}
    return _wait(browser, ready, f"an answer for budget {budget}")


def _shoot(browser: Any, path: Path) -> None:
    """A screenshot of the whole page (the window grown to the page's height), also to $AMOEBA_WEB_SCREENSHOT."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, max(720, int(height) + 140))  # + the window's frame in headless mode
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000
    if os.environ.get("AMOEBA_WEB_SCREENSHOT"):
        shutil.copyfile(path, os.environ["AMOEBA_WEB_SCREENSHOT"])
    browser.set_window_size(1280, 1080)


def _slide_to(browser: Any, budget_ms: float) -> float:
    """Move the slider to the position of ``budget_ms`` as a person would (input events); return the shown budget."""
    pos = browser.execute_script("return msToSlider(arguments[0])", budget_ms)
    browser.execute_script("const s = document.getElementById('budget'); s.value = arguments[0];"
                           "s.dispatchEvent(new Event('input', {bubbles: true}));", pos)
    return float(browser.find_element("id", "budget-ms").get_attribute("value"))


def test_without_a_token_the_page_asks_for_one(url: str, browser: Any) -> None:
    browser.get(url + "/")
    _wait(browser, lambda b: b.find_element("id", "login").is_displayed(), "the token field")
    assert "needs a token" in browser.find_element("id", "login-msg").text
    field = browser.find_element("id", "token")
    field.send_keys("wrong")
    field.submit()
    _wait(browser, lambda b: "refused" in b.find_element("id", "login-msg").text, "the refusal")
    field.clear()
    field.send_keys(TOKEN)
    field.submit()
    assert _answer(browser)["key"]
    assert not browser.find_element("id", "login").is_displayed()


def test_slider_shows_the_same_shape_as_query(url: str, api: httpx.Client, browser: Any, tmp_path: Path) -> None:
    from urllib.parse import quote

    browser.execute_script("sessionStorage.clear()")
    browser.get("about:blank")
    browser.get_log("browser")  # drop what an earlier test left (its 401s)
    browser.get(url + "/#token=" + quote(TOKEN))
    _answer(browser)
    assert "token" not in browser.current_url  # the token is dropped from the address bar
    front = api.get("/fronts/cpu-host/pytorch").json()["front"]
    shapes = api.get("/web/shapes/cpu-host/pytorch").json()["shapes"]
    assert len(front) == 4 and len(shapes) == 8
    # the page draws every evaluated shape (grey) and every front shape (coloured)
    assert len(browser.find_elements("css selector", "#chart circle.eval")) == len(shapes) - len(front)
    assert len(browser.find_elements("css selector", "#front-table tbody tr")) == len(front)

    lats = [p["latency_ms"] for p in front]
    targets = [(lats[i] * lats[i + 1]) ** 0.5 for i in (0, len(lats) // 2 - 1, len(lats) - 2)]
    seen = []
    for target in targets:
        budget = _slide_to(browser, target)
        shown = _answer(browser, budget)
        q = api.get("/query", params={"device": "cpu-host", "flow": "pytorch", "budget_ms": budget}).json()
        assert q["feasible"] and shown["feasible"] == "true"
        p = q["shape"]
        assert shown["key"] == p["key"]
        assert shown["shape"] == f"d{p['depth']}-w{p['width']:.3f}" == p["key"].rsplit("-", 1)[0]
        assert shown["acc"].startswith(f"{p['accuracy']:.4f}")
        assert shown["source"] == p["latency_source"]
        assert shown["export"] == q["export_command"]
        chosen = browser.find_elements("css selector", "#front-table tr.chosen td")
        assert chosen and chosen[0].text == shown["shape"]
        seen.append(p["key"])
    assert len(set(seen)) == 3, f"three budgets should pick three shapes: {seen}"

    # clicking a front shape in the table sets the budget to its latency: that shape is the answer
    for i in (2, 0):
        browser.find_elements("css selector", "#front-table tbody tr")[i].click()
        budget = _wait(browser, lambda b: float(b.find_element("id", "budget-ms").get_attribute("value")) >= lats[i]
                       and float(b.find_element("id", "budget-ms").get_attribute("value")) < lats[i + 1]
                       and float(b.find_element("id", "budget-ms").get_attribute("value")), f"front shape {i}'s budget")
        assert _answer(browser, budget)["key"] == front[i]["key"]

    # the keyboard moves the slider too (the browser's own input events)
    from selenium.webdriver.common.keys import Keys

    before = float(browser.find_element("id", "budget-ms").get_attribute("value"))
    browser.find_element("id", "budget").send_keys(Keys.ARROW_RIGHT * 25)
    _wait(browser, lambda b: float(b.find_element("id", "budget-ms").get_attribute("value")) > before, "a larger budget")
    budget = float(browser.find_element("id", "budget-ms").get_attribute("value"))
    shown = _answer(browser, budget)
    q = api.get("/query", params={"device": "cpu-host", "flow": "pytorch", "budget_ms": budget}).json()
    assert shown["key"] == q["shape"]["key"]

    # the address is a link to what is shown (without the token): opened again, it shows the same answer
    link = browser.current_url
    assert "token" not in link and "budget=" in link and "device=cpu-host" in link
    browser.get("about:blank")
    browser.get(link)
    assert _answer(browser, float(shown["budget"]))["key"] == shown["key"]

    # another phase: the page re-reads the front and its answer is /query's for that phase
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "phase")).select_by_value("prefill")
    _wait(browser, lambda b: b.find_element("id", "answer").get_attribute("data-state") == "ready"
          and "prefill" in b.find_element("css selector", "#chart").text, "the prefill front")
    shown = _answer(browser)
    q = api.get("/query", params={"device": "cpu-host", "flow": "pytorch", "phase": "prefill",
                                  "budget_ms": shown["budget"]}).json()
    assert shown["key"] == q["shape"]["key"]
    Select(browser.find_element("id", "phase")).select_by_value("decode")
    _wait(browser, lambda b: "decode" in b.find_element("css selector", "#chart").text, "the decode front again")

    # a budget below the fastest shape: the page says nothing fits and names the fastest
    box = browser.find_element("id", "budget-ms")
    box.clear()
    box.send_keys(f"{lats[0] / 10:.6g}\n")
    shown = _answer(browser, float(f"{lats[0] / 10:.6g}"))
    assert shown["feasible"] == "false" and shown["shape"] == "none fits" and "fastest" in shown["lat"]

    # offline: every resource came from this server, and the console has no error
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)")
    assert origins and set(origins) == {url}
    errors = [m for m in browser.get_log("browser") if m["level"] == "SEVERE"]
    assert not errors, errors

    _slide_to(browser, targets[1])
    _answer(browser, float(browser.find_element("id", "budget-ms").get_attribute("value")))
    _shoot(browser, tmp_path / "web-front.png")


@pytest.mark.skipif(not os.environ.get("AMOEBA_WEB_RUN"), reason="set AMOEBA_WEB_RUN=<run folder> to screenshot it")
def test_screenshot_of_a_run(browser: Any, tmp_path: Path) -> None:
    """The page over a real run: the answer shown at the default budget is /query's; screenshot saved."""
    run = Path(os.environ["AMOEBA_WEB_RUN"])
    profiles = Path(os.environ["AMOEBA_PROFILES"]) if os.environ.get("AMOEBA_PROFILES") else None
    for base in _serve(run, profiles, None):
        browser.get("about:blank")
        browser.get(base + "/#" + os.environ.get("AMOEBA_WEB_VIEW", ""))
        shown = _answer(browser)
        sel = {k: browser.execute_script("return selection()")[k] for k in ("device", "flow", "phase", "variant")}
        with httpx.Client(base_url=base, timeout=10) as c:
            q = c.get("/query", params={**{k: v for k, v in sel.items() if v}, "budget_ms": shown["budget"]}).json()
        assert shown["key"] == (q["shape"] or {}).get("key", "")
        _shoot(browser, tmp_path / "web-front.png")
