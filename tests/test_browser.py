"""The LongLive panel in a real browser (Debian's Chromium, driven by Playwright) on a real ComfyUI page."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from host import ComfyHost, make_tiny_models  # noqa: E402
from run_main import tiny_graph  # noqa: E402
from workflow_format import api_to_ui  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not shutil.which("chromium") and not os.environ.get("LONGLIVE_REQUIRE_BROWSER"):  # CI sets it: there it must run
    pytest.skip("no chromium on this machine (scripts/test.sh installs Debian's with apt-get where it runs as root)",
                allow_module_level=True)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def ui_host(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_ui")
    names = make_tiny_models(base / "models")
    with ComfyHost(base, extra_args=["--preview-method", "auto"], frontend=True) as server:
        server.names = names
        yield server


@pytest.fixture
def page(ui_host):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        ui_host.request("POST", "/settings/Comfy.TutorialCompleted", True)  # no first-visit template browser
        page.goto(ui_host.url)
        page.wait_for_selector("#longlive-panel", timeout=120_000)
        close_dialogs(page)
        yield page
        browser.close()


def close_dialogs(page) -> None:
    """A first visit opens ComfyUI's template browser over the page; close it as a person would."""
    for _ in range(10):
        if page.locator(".p-dialog-mask").count() == 0:
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)


def live_session(host):
    return host.get("/longlive/sessions")["sessions"].get("live")


def test_live_workflow_switches_prompt_from_the_panel(ui_host, page):
    graph = tiny_graph(json.loads((REPO / "workflows" / "api" / "longlive_live.json").read_text()), ui_host.names)
    graph["4"]["inputs"].update(length=900, length_unit="latent frames", reset=True)
    workflow = api_to_ui(graph, ui_host.get("/object_info"))
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); await window.app.queuePrompt(0); }", workflow)

    panel = "document.querySelector('#longlive-panel').dataset"
    page.wait_for_function(f"Number({panel}.frames || 0) >= 6 && Number({panel}.streamShown || 0) >= 2", timeout=120_000)
    stats = page.inner_text("#longlive-stats")
    assert re.search(r": frame \d+ \(0:0\d\.\d\), [\d.]+ ms/block \([\d.]+ fps made\), decode [\d.]+ ms", stats), stats
    page.type("#longlive-prompt", "the boat reaches the harbour", delay=20)
    deadline = time.time() + 60  # the panel sends the text once typing pauses; the run encodes it while it waits
    while time.time() < deadline and live_session(ui_host)["typed_encoded"] != "the boat reaches the harbour":
        time.sleep(0.05)
    shown = int(page.get_attribute("#longlive-panel", "data-frames"))  # as Enter is pressed (the wait took blocks)
    page.press("#longlive-prompt", "Enter")
    page.wait_for_selector(".longlive-switch", timeout=60_000)  # the timeline shows the switch point

    (switch,) = live_session(ui_host)["switches"]
    assert switch["text"] == "the boat reaches the harbour" and switch["encoded_ahead"]
    assert switch["frame"] % 3 == 0 and shown <= switch["frame"] <= shown + 9  # the next block (the page lags a block)
    assert page.inner_text("#longlive-message").startswith("prompt: frame")

    close_dialogs(page)
    page.click("#longlive-stop")
    page.wait_for_function("document.querySelector('#longlive-message').textContent.startsWith('stop: frame')")
    deadline = time.time() + 120
    while time.time() < deadline and not ui_host.get("/history"):
        time.sleep(0.2)  # the run ends at the next block, then decodes and saves the video
    history = ui_host.get("/history")
    assert history and all(e["status"]["status_str"] == "success" for e in history.values())
    frames = live_session(ui_host)["frames"]
    assert frames < 900

    # the player got every frame of the video, in order, and played them (the sender paces them at 16 fps)
    pixels = 4 * frames - 3
    page.wait_for_function(f"Number({panel}.streamLast) === {pixels - 1} && Number({panel}.streamShown) === {pixels - 1}",
                           timeout=60_000)
    assert page.get_attribute("#longlive-panel", "data-stream-frames") == str(pixels)
    assert page.get_attribute("#longlive-panel", "data-stream-order") == "ok"
    assert re.search(r"playing frame \d+: [\d.]+ fps delivered, buffer \d+, prompt to pixel \d+ ms",
                     page.inner_text("#longlive-playback"))


def test_schedule_node_shows_its_prompts_on_a_timeline(ui_host, page):
    graph = tiny_graph(json.loads((REPO / "workflows" / "api" / "longlive_one_minute.json").read_text()), ui_host.names)
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", api_to_ui(graph, ui_host.get("/object_info")))
    page.wait_for_function("window.app.graph._nodes.some((n) => n.longliveSegments?.length)", timeout=30_000)
    starts = page.evaluate("window.app.graph._nodes.find((n) => n.type === 'LongLive_PromptSchedule')"
                           ".longliveSegments.map((s) => s.start)")
    assert starts == [0, 42, 81, 120, 162, 201]  # the same starts the sampler uses
