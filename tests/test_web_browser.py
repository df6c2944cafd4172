"""``grufinity serve`` in a real headless browser (Chromium through selenium): generate with a
fixed seed and read back what ``grufinity generate`` prints, Stop, the runs view's curve, one
coloured span per token inside the model, and a broken checkpoint's error on the page.

Needs ``chromium`` and ``chromium-driver`` (``.ci/browser.sh``): skipped without them, except in
CI (``CI=true``), where they must be there."""

from __future__ import annotations

import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import clean_env, grufinity_exe
from webtools import IN_CI, copy_run, need

need("fastapi", "pip install '.[web]'")
need("uvicorn", "pip install '.[web]'")
need("selenium", "pip install '.[test]'")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

WAIT = 30  # seconds any one thing may take on the page


def find_browser() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        message = "no chromium and chromedriver (run .ci/browser.sh)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory, trained):
    """``grufinity serve`` on a free port over a copy of the tiny run and a broken one."""
    root = tmp_path_factory.mktemp("browser-runs")
    copy_run(trained["run_dir"], root / "tiny")
    weights = copy_run(trained["run_dir"], root / "broken") / "checkpoints" / "step-3" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    proc = subprocess.Popen([grufinity_exe(), "serve", str(root), "--port", "0", "--max-new-tokens", "1000000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env())
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    url, seen, deadline = None, [], time.monotonic() + WAIT
    while url is None and time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            continue
        if m := re.search(r"http://127\.0\.0\.1:\d+/", seen[-1]):
            url = m.group(0)
    if url is None:
        proc.kill()
        pytest.fail("grufinity serve did not start: " + "".join(seen))
    yield {"url": url, "root": root}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def open_view(driver, url: str, view: str, run: str = "tiny") -> WebDriverWait:
    """The page on ``view`` in a fresh session (sessionStorage cleared), with ``run`` picked."""
    driver.get(url + "static/style.css")  # same origin, no page script running
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{url}?fresh={time.monotonic_ns()}#{view}")
    # The runs view redraws its list and charts as it refreshes: an element found a moment ago
    # may have been replaced, so each wait looks again.
    wait = WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    Select(driver.find_element(By.ID, "run")).select_by_value(run)
    return wait


def set_box(driver, key: str, value) -> None:
    box = driver.find_element(By.ID, f"s-{key}")
    box.clear()
    box.send_keys(str(value))


def generated(driver) -> str:
    return driver.execute_script("return document.querySelector('#transcript .gen').textContent")


def test_generate_with_a_seed_writes_what_the_cli_writes(browser, server):
    wait = open_view(browser, server["url"], "generate")
    for key, value in (("seed", 11), ("max_new_tokens", 40), ("temperature", 0.9), ("top_k", 50)):
        set_box(browser, key, value)
    browser.find_element(By.ID, "prompt").send_keys("The quick")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#transcript .gen:not(.running)"))
    cli = subprocess.run([grufinity_exe(), "generate", str(server["root"] / "tiny"), "-p", "The quick", "--seed", "11",
                          "-n", "40", "--temperature", "0.9", "--top-k", "50"],
                         capture_output=True, env=clean_env(), timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "The quick" + generated(browser) + "\n" == cli.stdout.decode("utf-8", errors="replace")
    assert browser.find_element(By.ID, "gen-status").text.startswith("49 tokens in the state")  # 9 + 40
    assert browser.find_elements(By.CSS_SELECTOR, "#timing-chart")


def test_stop_ends_a_long_generation(browser, server):
    wait = open_view(browser, server["url"], "generate")
    # Far more than a tiny model decodes in the test's time (it did 1,000,000 in 15 s on a 2-core
    # AMD EPYC, finishing before Stop was clicked once): only Stop can end it.
    set_box(browser, "max_new_tokens", 1_000_000_000)
    browser.find_element(By.ID, "prompt").send_keys("a")
    browser.find_element(By.ID, "send").click()
    wait.until(lambda d: len(generated(d)) > 0)
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda d: d.find_element(By.ID, "send").is_enabled())
    assert "ended by cancelled" in browser.find_element(By.ID, "gen-status").text


def test_runs_view_draws_the_loss_curve(browser, server):
    wait = open_view(browser, server["url"], "runs")
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#run-list li[data-run="tiny"]').click() or True)
    curve = wait.until(lambda d: d.find_element(
        By.CSS_SELECTOR, '#loss-chart path.series[data-name="train loss"]').get_attribute("d"))
    assert curve.count("L") == 2  # three steps: a line through three points


def test_inside_view_colours_each_token(browser, server):
    wait = open_view(browser, server["url"], "inside")
    text = "héllo wörld\nthe end"
    box = browser.find_element(By.ID, "inspect-text")
    box.clear()
    box.send_keys(text)
    browser.find_element(By.ID, "inspect").click()
    spans = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tokens .tok"))
    assert len(spans) == len(text.encode())  # byte tokens: one span per token
    for measure in browser.find_elements(By.CSS_SELECTOR, "#colour-by input"):  # surprise, layer 1 z
        measure.click()
        colours = browser.execute_script(
            "return [...document.querySelectorAll('#tokens .tok')].map(s => getComputedStyle(s).backgroundColor)")
        assert len(colours) == len(spans) and "rgba(0, 0, 0, 0)" not in colours
        assert len(set(colours)) > 3
    assert "".join(s.get_attribute("textContent") for s in spans) == text


def test_a_broken_checkpoint_shows_an_error(browser, server):
    wait = open_view(browser, server["url"], "generate", run="broken")
    browser.find_element(By.ID, "prompt").send_keys("a")
    browser.find_element(By.ID, "send").click()
    error = wait.until(lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").is_displayed() else None)
    assert "cannot load checkpoint broken/step-3" in error.text
    assert Path(server["root"] / "broken").is_dir()
