"""The results site in a real browser: headless Chromium driven by Selenium (Debian's chromium and
chromium-driver; these tests skip, saying why, where they are not installed).

The site is built once from real --quick runs on generated data (two recipes of mnist-mlp and a
least-squares run), plus a copy of a run holding a hostile config value and note and an incomplete one.
"""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from conftest import run_quick, write_image_dataset

from dlclassics import site
from dlclassics.files import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import site_screenshot  # noqa: E402  (the script that makes docs/site.png starts the browser the same way)

HOSTILE = "<script>window.pwned = 1</script><img src=x onerror=window.pwned=2>"


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site over a few real --quick runs (generated data, so --unverified) and two doctored copies."""
    reason = site_screenshot.missing_browser()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("site")
    data = tmp / "data"
    write_image_dataset(data / "mnist")
    runs = tmp / "runs"
    common = ("--unverified", "--no-site")
    tuned = run_quick("mnist-mlp", data, runs, *common)
    seed = run_quick("mnist-mlp", data, tmp / "seed", "--recipe", "seed", *common)
    shutil.move(seed, runs / "mnist-mlp" / seed.name)
    least_squares = run_quick("least-squares", data, runs, *common)

    hostile = shutil.copytree(least_squares, least_squares.with_name("20000101-000000-0badc0"))
    record = site.read_json(hostile / "config.json", dict)
    atomic_write_json(hostile / "config.json", {**record, "config": {**record["config"], "solver": HOSTILE}})
    report = site.read_json(hostile / "report.json", dict)
    atomic_write_json(hostile / "report.json", {**report, "notes": [HOSTILE]})
    incomplete = shutil.copytree(tuned, tuned.with_name(tuned.name[:-6] + "c0ffee.incomplete"))
    (incomplete / "metrics.json").unlink()
    return site.build(runs)


@pytest.fixture(scope="module")
def browser(index: Path, tmp_path_factory: pytest.TempPathFactory):
    driver = site_screenshot.start_chromium(tmp_path_factory.mktemp("profile"))
    yield driver
    driver.quit()


def visit(browser, url: str) -> None:
    """Open `url` at laptop size and check that the page logged no error (a missing file, a script error)."""
    site_screenshot.set_viewport(browser, site_screenshot.LAPTOP)
    browser.get(url)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, (url, errors)


def pages_of(index: Path) -> list[Path]:
    return sorted(index.parent.rglob("*.html"))


def visible_rows(browser) -> list[list[str]]:
    rows = browser.find_elements("css selector", "#runs tbody tr")
    return [[cell.text for cell in row.find_elements("css selector", "td")] for row in rows if row.is_displayed()]


def test_every_page_loads_its_figures_and_every_link_resolves(browser, index):
    images = 0
    for html in pages_of(index):
        visit(browser, html.as_uri())
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        assert not broken, (html, broken)
        images += browser.execute_script("return document.images.length")
        for href in browser.execute_script("return Array.from(document.links).map(a => a.href)"):
            url = urlparse(href)
            assert url.scheme == "file", (html, href)  # nothing points at a network
            assert Path(unquote(url.path)).is_file(), (html, href)
    assert len(pages_of(index)) == 1 + 2 + 5 and images >= 2 * 4  # index, 2 experiments, 5 runs; mnist-mlp's figures


def sort_values(browser, column: int) -> list[str]:
    """The visible rows' values in `column` as the sorting reads them (data-sort: seconds, dates)."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#runs tbody tr')).filter(r => !r.hidden)"
        ".map(r => r.cells[arguments[0]].dataset.sort)", column)


def test_sorting_reorders_the_rows(browser, index):
    visit(browser, index.as_uri())
    newest_first = [row[0] for row in visible_rows(browser)]
    wall_time = browser.find_element("xpath", "//th/button[text()='wall time']")
    wall_time.click()
    ascending = sort_values(browser, 9)
    wall_time.click()
    descending = sort_values(browser, 9)
    seconds = [float(value) for value in ascending if value]
    assert seconds == sorted(seconds) and len(set(seconds)) > 1
    assert [float(value) for value in descending if value] == sorted(seconds, reverse=True)
    assert ascending[-1] == descending[-1] == ""  # the incomplete run has no wall time: last either way
    experiment = browser.find_element("xpath", "//th/button[text()='experiment']")
    experiment.click()
    experiment.click()
    by_experiment = [row[0] for row in visible_rows(browser)]
    assert by_experiment == sorted(newest_first, reverse=True) != newest_first


def test_filtering_shows_one_experiments_rows(browser, index):
    from selenium.webdriver.support.ui import Select

    visit(browser, index.as_uri())
    assert len(visible_rows(browser)) == 5
    Select(browser.find_element("id", "experiment-filter")).select_by_value("mnist-mlp")
    rows = visible_rows(browser)
    assert len(rows) == 3 and {row[0] for row in rows} == {"mnist-mlp"}
    assert browser.find_element("id", "shown-count").text == "3 of 5 runs shown"
    Select(browser.find_element("id", "experiment-filter")).select_by_value("")
    assert len(visible_rows(browser)) == 5


def test_incomplete_run_is_marked_and_hostile_values_are_text(browser, index):
    visit(browser, index.as_uri())
    statuses = {row[1]: row[2] for row in visible_rows(browser)}  # short run id -> status
    assert statuses.pop("c0ffee") == "incomplete" and set(statuses.values()) == {"finished"}
    visit(browser, (index.parent / "runs" / "least-squares" / "20000101-000000-0badc0" / "index.html").as_uri())
    assert browser.execute_script("return window.pwned") is None
    body = browser.find_element("tag name", "body").text
    assert body.count(HOSTILE) == 2  # the note and the config table's value


def png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


@pytest.mark.parametrize("size", [site_screenshot.LAPTOP, site_screenshot.PHONE])
def test_pages_fit_laptop_and_phone_screens(browser, index, tmp_path, size):
    for html in (index, index.parent / "experiments" / "mnist-mlp.html"):
        visit(browser, html.as_uri())
        site_screenshot.set_viewport(browser, size)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= size[0], (html, width)  # wide tables scroll inside their box, not the page
        shot = tmp_path / f"{html.stem}-{size[0]}x{size[1]}.png"
        browser.save_screenshot(str(shot))
        assert png_size(shot) == size
