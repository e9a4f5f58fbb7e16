"""Regenerate docs/site.png, the README's picture of the results site, from real runs.

    python scripts/site_screenshot.py --runs runs            # builds runs/site, then shoots its index
    python scripts/site_screenshot.py --runs /tmp/site-runs --out docs/site.png

Needs Debian's `chromium` and `chromium-driver` and the `selenium` package (the `test` extra).
`start_chromium` is also what the browser tests use, so the flags this machine needs live in one place.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import shutil
import sys
import tempfile
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Headless, as root in a container, with nothing fetched or synced in the background.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")
LAPTOP, PHONE = (1280, 800), (390, 844)
MAX_BYTES = 300_000


def missing_browser() -> str | None:
    """Why the browser cannot be started here (for a skip message), or None when it can."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        return "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
    return None


def start_chromium(profile: Path) -> "selenium.webdriver.Chrome":  # noqa: F821
    """Headless Chromium driven by Debian's chromedriver, with a fresh profile in `profile` and the
    browser console recorded (the tests check it for errors)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def set_viewport(driver: "selenium.webdriver.Chrome", size: tuple[int, int]) -> None:  # noqa: F821
    """The page's viewport exactly `size` CSS pixels (a phone's width included, which a window cannot be)."""
    width, height = size
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def small_png(png: bytes) -> bytes:
    """The screenshot with a 256-colour palette: a page of text and flat colours stays sharp at a third
    of the size."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="root folder of run folders")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "site.png")
    args = parser.parse_args(argv)
    reason = missing_browser()
    if reason:
        print(f"site_screenshot: {reason}", file=sys.stderr)
        return 1

    from dlclassics import site
    from dlclassics.files import atomic_write_bytes

    index = site.build(args.runs)
    with tempfile.TemporaryDirectory() as profile:
        driver = start_chromium(Path(profile))
        try:
            set_viewport(driver, LAPTOP)
            driver.get(index.resolve().as_uri())
            png = small_png(driver.get_screenshot_as_png())
        finally:
            driver.quit()
    if len(png) > MAX_BYTES:
        print(f"site_screenshot: {len(png):,} bytes, more than {MAX_BYTES:,}", file=sys.stderr)
        return 1
    atomic_write_bytes(args.out, png)
    print(f"{args.out}: {len(png):,} bytes, {LAPTOP[0]}x{LAPTOP[1]}, from {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
