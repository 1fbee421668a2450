"""Take the README's screenshots of the web console: ``uv run python scripts/screenshots.py``.

Starts ``fleetcloud serve --demo`` on a free port with a fresh database, lets the
simulator publish for a while so the charts have a history, signs in with the printed
admin token, starts the demo pump, and saves PNGs of the main pages at laptop
(1280×800) and phone (390×844) widths into ``docs/screenshots/``. Needs Debian's
``chromium`` (``./dev test`` installs it) and the dev dependencies (Playwright).
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_demo(directory: Path) -> tuple[subprocess.Popen[bytes], str, str, dict[str, str]]:
    port = free_port()
    log = directory / "server.log"
    args = ["serve", "--port", str(port), "--database", f"sqlite:///{directory / 'db.sqlite'}"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fleetcloud.cli", *args, "--demo"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while "web console:" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"fleetcloud did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    banner = log.read_text()
    token = re.search(r"admin token:\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
    listed = re.search(r"devices:\s+(.+)", banner).group(1)  # type: ignore[union-attr]
    devices = dict(re.findall(r"([\w-]+) \((\d+)\)", listed))
    return process, f"http://127.0.0.1:{port}", token, devices


def shoot(page: Page, path: Path, *, full_page: bool = False) -> None:
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(500)  # let the charts draw and live values arrive
    page.screenshot(path=str(path), full_page=full_page)
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--history", type=float, default=40, help="seconds of data first")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as directory:
        process, url, token, devices = start_demo(Path(directory))
        try:
            time.sleep(options.history)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=options.chromium, args=CHROMIUM_ARGS
                )
                take(browser.new_page(viewport={"width": 1280, "height": 800}), url, token,
                     devices, options.out, "laptop")  # fmt: skip
                take(browser.new_page(viewport={"width": 390, "height": 844}), url, token,
                     devices, options.out, "phone")  # fmt: skip
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=20)


def take(page: Page, url: str, token: str, devices: dict[str, str], out: Path, size: str) -> None:
    page.goto(url + "/signin")
    if size == "laptop":
        page.fill("#token", "fc_not-a-real-token")
        page.press("#token", "Enter")
        shoot(page, out / "signin-error.png")
    page.fill("#token", token)
    page.press("#token", "Enter")
    page.wait_for_url("**/devices")
    page.wait_for_timeout(2500)
    shoot(page, out / f"devices-{size}.png", full_page=size == "laptop")
    page.goto(f"{url}/devices/{devices['pump-station-1']}")
    if size == "laptop":  # start the pump, so the page shows a command's effect
        page.get_by_role("button", name="Start / stop pump").click()
        page.get_by_role("button", name="Confirm").click()
        page.wait_for_timeout(4000)
    shoot(page, out / f"device-{size}.png", full_page=size == "laptop")
    if size == "laptop":
        page.goto(f"{url}/devices/{devices['cold-room-3']}")
        page.wait_for_timeout(2500)
        shoot(page, out / "device-cold-room.png")
        job_pages(page, url, out)
        take_apps_and_commands(page, url, out)


def take_apps_and_commands(page: Page, url: str, out: Path) -> None:
    """An installation of the demo's processors after a manual invocation, and the
    commands page after a command pushed from its form."""
    page.goto(url + "/apps")
    page.locator("tr[data-installation] a").first.click()
    page.wait_for_load_state("networkidle")  # the page's script handles the button
    page.get_by_role("button", name="Invoke now").click()
    page.wait_for_timeout(3000)
    shoot(page, out / "apps.png")
    page.goto(url + "/commands")
    page.get_by_label("Device", exact=True).select_option(label="pump-station-1")
    page.get_by_label("Command type").fill("set_target_level")
    page.get_by_label("Payload (a JSON object)").fill('{"level": 80}')
    page.get_by_role("button", name="Push command").click()
    page.wait_for_url("**/commands/*")
    page.goto(url + "/commands")
    shoot(page, out / "commands.png")


def job_pages(page: Page, url: str, out: Path) -> None:
    """A job on the north-field group: the demo agent's device runs it, the other waits."""
    for _ in range(60):  # the demo agent is polling a moment after the server starts
        page.goto(url + "/jobs/new")
        if page.locator("[data-listening]").count():
            break
        page.wait_for_timeout(500)
    page.get_by_label("Groups").check()
    page.get_by_label("north-field").check()
    shoot(page, out / "job-new.png", full_page=True)
    page.get_by_role("button", name="Run job").click()
    page.get_by_text("Succeeded").first.wait_for()
    page.locator("details[data-stream='stdout'] summary").first.click()
    shoot(page, out / "job-detail.png", full_page=True)
    page.goto(url + "/jobs")
    shoot(page, out / "jobs.png")


if __name__ == "__main__":
    main()
