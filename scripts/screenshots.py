"""Dashboard screenshots for the docs: `python -m scripts.screenshots docs/img`.

Starts `selfinstruct serve` on a throwaway SQLite database in a temporary folder, on a free
loopback port, fills it through the public API with one run that needs no model (strategy
`template`, classification and instances off, so the pictures never depend on a model's mood),
photographs the dashboard's pages in Debian's Chromium through Playwright, and stops everything.
Nothing is written outside the temporary folder except the PNGs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from testbed.live import free_port, serve_api, wait_ready

CHROMIUM = "/usr/bin/chromium"
# The flags keep a headless browser from reaching out (background requests, component updates,
# sync) and from needing a GPU or a sandbox that containers lack.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Small enough that the four PNGs stay under 100 KB each, wide enough for the tables.
VIEWPORT = {"width": 1100, "height": 720}

# What the pictures show: page file name -> URL fragment of the dashboard.
PAGES: dict[str, str] = {
    "dataset.png": "#/d/default",
    "run.png": "#/runs/{run_id}",
    "tasks.png": "#/d/default/tasks?contains=bread",
    "stats.png": "#/d/default/stats",
}

# Distinct topics make distinct tasks; the same topic for another reader scores above the
# novelty threshold, so the run shows rejections as well as acceptances, and reaches its target.
TEMPLATE_RUN: dict[str, Any] = {
    "target": 10,
    "strategy": "template",
    "classify": False,
    "generate_instances": False,
    "template": {
        "templates": ["Explain {topic} to {reader}.", "用三句话向{zh_reader}解释{zh_topic}。"],
        "values": {
            "topic": [
                "how vaccines teach the immune system to recognise a virus",
                "why the sky looks blue at noon but red at sunset",
                "what a mortgage interest rate changes about monthly payments",
                "how a compiler turns source code into machine instructions",
                "why bread dough rises when yeast is added",
                "what inflation does to savings kept in cash",
            ],
            "reader": ["a ten-year-old", "a new nurse", "a retired engineer"],
            "zh_topic": [
                "光合作用的过程",
                "地震是怎样发生的",
                "复利的计算方法",
                "电动汽车的电池寿命",
            ],
            "zh_reader": ["小学生", "新同事"],
        },
    },
}
# A reviewer's corrections, applied through the API after the run.
REVIEW_NOTE = "too vague for a training example"
EDITED_INSTANCE = {
    "input": "",
    "output": "Yeast eats the sugar in the dough and breathes out carbon dioxide; the gluten "
    "network traps the gas in small bubbles, so the dough swells.",
}


def add_data(base: str) -> int:
    """A finished run with accepted and rejected candidates, then a review; returns its id."""
    with httpx.Client(base_url=base, timeout=30) as client:
        run = client.post("/v1/datasets/default/runs", json=TEMPLATE_RUN)
        run.raise_for_status()
        run_id = int(run.json()["id"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = client.get(f"/v1/runs/{run_id}").json()["status"]
            if status in {"succeeded", "failed", "cancelled"}:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"run {run_id} did not finish in 120 s; see the server log")
        review(client, run_id)
    return run_id


def review(client: httpx.Client, run_id: int) -> None:
    """Reject one accepted task and give another an answer, as a reviewer would."""
    accepted = client.get(
        "/v1/datasets/default/tasks", params={"run_id": run_id, "status": "accepted"}
    ).json()["data"]
    if len(accepted) < 2:
        raise RuntimeError(f"run {run_id} accepted {len(accepted)} tasks; the pictures need 2")
    bread = next((t for t in accepted if "bread" in t["instruction"]), accepted[0])
    other = next(t for t in accepted if t["id"] != bread["id"])
    client.post(
        f"/v1/tasks/{bread['id']}/edits", json={"instances": [EDITED_INSTANCE]}
    ).raise_for_status()
    client.patch(
        f"/v1/tasks/{other['id']}", json={"status": "rejected", "note": REVIEW_NOTE}
    ).raise_for_status()


def photograph(base: str, out: Path, run_id: int) -> list[Path]:
    """One PNG per page, taken once the view says it rendered that page (`data-ready`)."""
    from playwright.sync_api import expect, sync_playwright

    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(base_url=base, viewport=VIEWPORT)  # type: ignore[arg-type]
            page = context.new_page()
            for name, fragment in PAGES.items():
                fragment = fragment.format(run_id=run_id)
                page.goto(f"/{fragment}")
                # the fragment as the browser keeps it in location.hash, which the view echoes
                ready = quote(fragment, safe="#/?=&")
                expect(page.locator("#view")).to_have_attribute("data-ready", ready, timeout=30_000)
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(500)  # charts and event streams paint after the data
                path = out / name
                page.screenshot(path=str(path))
                written.append(path)
        finally:
            browser.close()
    return written


def main(argv: list[str]) -> int:
    """Everything in a temporary folder, so the repository's ./data is never touched."""
    if len(argv) != 1:
        print("usage: python -m scripts.screenshots OUTPUT_DIR", file=sys.stderr)
        return 2
    if not Path(CHROMIUM).exists():
        print(
            f"{CHROMIUM} is missing: install Debian's chromium "
            "(bash scripts/ensure-test-services.sh does)",
            file=sys.stderr,
        )
        return 1
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="selfinstruct-screens-") as tmp:
        data = Path(tmp)
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{data / 'screens.db'}",
            "SELFINSTRUCT_DATA_DIR": str(data),
            "SELFINSTRUCT_WORKER_POLL_SECONDS": "0.2",
            "HF_HUB_OFFLINE": "1",
        }
        env.pop("SELFINSTRUCT_API_TOKEN", None)  # a token would put a dialog in every picture
        env.pop("SELFINSTRUCT_PRIVATE_READS", None)
        subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env=env, check=True)
        port = free_port()
        server = serve_api(env, port, data / "server.log")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base)
            run_id = add_data(base)
            written = photograph(base, out, run_id)
        except Exception:
            log = (data / "server.log").read_text(errors="replace")[-4000:]
            print(f"the server's log ends:\n{log}", file=sys.stderr)
            raise
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    for path in written:
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
