"""Screenshots of the three views of ``grufinity serve`` for the README (docs/web-*.png).

    python scripts/web_screenshots.py RUNS_DIR RUN [--out docs] [--views generate,runs,inside]

Starts ``grufinity serve RUNS_DIR`` on a free port, drives headless Chromium (Debian's
``chromium`` and ``chromium-driver``, with ``selenium``) through a conversation, the run's page and
the inside view, and saves one PNG per view.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

INSIDE_TEXT = """ROMEO:
But soft, what light through yonder window breaks?
It is the east, and Juliet is the sun.
Arise, fair sun, and kill the envious moon,
Who is already sick and pale with grief."""


def browser(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    # The window size includes no browser chrome headless, but set the page's size exactly.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


def start_server(runs: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "grufinity", "serve", runs, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"http://[\d.]+:\d+/", line):
            return proc, m.group(0)
    raise SystemExit("grufinity serve did not start")


def ready(driver, wait: WebDriverWait, url: str, view: str, run: str) -> None:
    driver.get(url + "#" + view)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    Select(driver.find_element(By.ID, "run")).select_by_value(run)


def shoot_generate(driver, wait: WebDriverWait, url: str, args: argparse.Namespace, out: Path) -> None:
    """Three turns of one conversation (the timing chart then spans ~1,200 tokens of state)."""
    ready(driver, wait, url, "generate", args.run)
    for prompt, n in ((args.prompt, 400), ("\n\nJULIET:", 400), ("\n\nROMEO:", 400)):
        box = driver.find_element(By.ID, "s-max_new_tokens")
        box.clear()
        box.send_keys(str(n))
        driver.find_element(By.ID, "prompt").send_keys(prompt)
        driver.find_element(By.ID, "send").click()
        wait.until(lambda d: d.find_element(By.ID, "send").is_enabled())
    driver.save_screenshot(str(out / "web-generate.png"))


def shoot_runs(driver, wait: WebDriverWait, url: str, args: argparse.Namespace, out: Path) -> None:
    ready(driver, wait, url, "runs", args.run)
    item = f'#run-list li[data-run="{args.run}"]'
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, item))
    driver.find_element(By.CSS_SELECTOR, item).click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#loss-chart path.series"))
    driver.save_screenshot(str(out / "web-runs.png"))


def shoot_inside(driver, wait: WebDriverWait, url: str, args: argparse.Namespace, out: Path) -> None:
    """The text coloured by the second layer's z, one token hovered."""
    ready(driver, wait, url, "inside", args.run)
    text = driver.find_element(By.ID, "inspect-text")
    text.clear()
    text.send_keys(INSIDE_TEXT)
    driver.find_element(By.ID, "inspect").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tokens .tok"))
    radios = driver.find_elements(By.CSS_SELECTOR, "#colour-by input")
    radios[min(2, len(radios) - 1)].click()
    token = driver.find_elements(By.CSS_SELECTOR, "#tokens .tok")[40]
    webdriver.ActionChains(driver).move_to_element(token).perform()
    time.sleep(0.3)
    driver.save_screenshot(str(out / "web-inside.png"))


SHOTS = {"generate": shoot_generate, "runs": shoot_runs, "inside": shoot_inside}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs")
    parser.add_argument("run")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--views", default="generate,runs,inside", help="comma-separated views to shoot")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    views = args.views.split(",")
    proc, url = start_server(args.runs)
    driver = browser(1440, 1080)
    try:
        for view in views:
            SHOTS[view](driver, WebDriverWait(driver, 120), url, args, out)
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(10)
    print("saved " + ", ".join(str(out / f"web-{v}.png") for v in views))


if __name__ == "__main__":
    main()
