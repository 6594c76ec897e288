"""The dashboard of `monitor --serve` in headless Chromium (Selenium), run by tests/serve.rs.

While the run's shards wait for the file --go, the page's shard table and counts must match
`monitor --json`; once --go exists and the shards end, the same page (never reloaded) must show
the end, and its failed items must match `monitor --failures --json`. Saves a screenshot.
Exit 0 when every check passed; a message on stderr otherwise.
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def monitor(args, *extra):
    out = subprocess.run(
        [args.monitor, "--root", args.root, "--run", args.run, "--json", *extra],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def wait(what, cond, timeout=60.0):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            got = cond()
            if got:
                return got
        except Exception as e:  # the page redraws under us: look again
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


# Read in one script, so the page cannot redraw between two looks.
PAGE_STATE_JS = """
const counts = {};
for (const k of ["running", "done", "failed", "died", "interrupted", "pending", "stalled"]) {
  counts[k] = document.getElementById("n-" + k).textContent;
}
const rows = [...document.querySelectorAll("#shards tbody tr")].map((tr) =>
  [Number(tr.dataset.shard), tr.dataset.state, tr.querySelector("td.items").textContent]);
const failed = [...document.querySelectorAll("#failures tbody tr")].map((tr) => [
  Number(tr.dataset.shard), tr.dataset.key, tr.querySelector("td.reason").textContent,
  tr.querySelector("pre").textContent]);
return {counts, rows, failed};
"""


def page_state(driver):
    """The page as the test sees it: counts, shard rows (state, items), failed keys."""
    got = driver.execute_script(PAGE_STATE_JS)
    rows = {r[0]: (r[1], r[2]) for r in got["rows"]}
    failed = sorted((f[0], f[1]) for f in got["failed"])
    return got["counts"], rows, failed


def expected(snap, failures):
    s = snap["summary"]
    counts = {
        k: f"{s[k]:,}"
        for k in ["running", "done", "failed", "died", "interrupted", "pending", "stalled"]
    }
    rows = {
        sh["shard"]: (sh["state"], f"{sh['items_done']:,} / {sh['items_total']:,}")
        for sh in snap["shards"]
    }
    failed = sorted((it["shard"], it["key"]) for it in failures["items"])
    return counts, rows, failed


def matches(driver, args):
    """True when the page shows what `monitor --json` and `--failures --json` say now."""
    want = expected(monitor(args), monitor(args, "--failures"))
    got = page_state(driver)
    if got != want:
        matches.last = (got, want)
        return False
    return True


def main():
    ap = argparse.ArgumentParser()
    for a in ["--url", "--monitor", "--root", "--run", "--go", "--screenshot"]:
        ap.add_argument(a, required=True)
    args = ap.parse_args()

    opts = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"]:
        opts.add_argument(a)
    # The distribution's browser and driver (Selenium never downloads one here).
    opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=shutil.which("chromedriver")))
    try:
        driver.get(args.url)
        wait("the live stream", lambda: driver.find_element(By.ID, "conn").text == "live")
        assert driver.find_element(By.ID, "run").text == args.run
        # A mark that a reload would erase.
        driver.execute_script("window.__notReloaded = true;")

        # While every shard waits: the page and `monitor --json` agree.
        matches.last = None
        try:
            wait("the page to match monitor --json while the shards run", lambda: matches(driver, args))
        except AssertionError:
            raise AssertionError(f"page vs monitor --json: {matches.last}")
        counts, rows, failed = page_state(driver)
        assert counts["running"] == "3", counts
        assert failed == [], failed

        rows_now = lambda: driver.execute_script(PAGE_STATE_JS)["rows"]  # noqa: E731
        # Let the shards go: the page follows them to the end by itself.
        pathlib.Path(args.go).touch()
        wait("a shard to finish on the page", lambda: any(r[1] == "done" for r in rows_now()))
        wait("the run to end on the page", lambda: driver.find_element(By.ID, "ended").is_displayed())
        assert driver.execute_script("return window.__notReloaded === true;"), "the page was reloaded"
        matches.last = None
        try:
            wait("the page to match monitor --json at the end", lambda: matches(driver, args))
        except AssertionError:
            raise AssertionError(f"page vs monitor --json: {matches.last}")
        counts, rows, failed = page_state(driver)
        assert counts["done"] == "2" and counts["failed"] == "1", counts
        assert [k for _, k in failed] == ["13"], failed
        failed_rows = driver.execute_script(PAGE_STATE_JS)["failed"]
        assert "exit code 4" in failed_rows[0][2], failed_rows
        assert "item 13 is bad" in failed_rows[0][3], failed_rows

        # The table's controls: the failed shard first by default, a filter, a sort.
        rows_now = lambda: driver.execute_script(PAGE_STATE_JS)["rows"]  # noqa: E731
        assert rows_now()[0][1] == "failed", rows_now()
        box = driver.find_element(By.ID, "filter")
        box.send_keys("done")
        wait("the filter", lambda: [r[1] for r in rows_now()] == ["done", "done"])
        box.clear()
        box.send_keys(" ")  # an input event with an empty filter
        driver.find_element(By.CSS_SELECTOR, 'th[data-sort="shard"]').click()
        wait("the sort by shard", lambda: [r[0] for r in rows_now()] == [0, 1, 2])
        errors = [
            e for e in driver.get_log("browser") if e.get("level") == "SEVERE"
        ] if hasattr(driver, "get_log") else []
        assert not errors, f"errors in the browser console: {errors}"
        driver.find_element(By.CSS_SELECTOR, 'th[data-sort="attention"]').click()
        driver.execute_script("window.scrollTo(0, 0);")
        time.sleep(0.5)
        driver.save_screenshot(args.screenshot)
        print(f"dashboard browser test passed; screenshot: {args.screenshot}")
    finally:
        driver.quit()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"dashboard browser test failed: {e}", file=sys.stderr)
        sys.exit(1)
