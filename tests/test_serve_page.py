"""The worklist page in a real headless Chromium (Debian's, driven by Playwright) against a real `medlens serve`."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from medlens.serve.auth import add_token
from medlens.serve.samples import stow_body, write_cr_study
from tests.serve_helpers import free_port, start_server, wait_idle

PRETRAINED = Path(__file__).parents[1] / "src" / "medlens" / "pretrained"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")


def test_worklist_study_view_and_a_read_that_moves_agreement(kermany_files: list[tuple[Path, str]], tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "pneumonia").symlink_to(PRETRAINED / "pneumonia")
    tokens = tmp_path / "tokens.json"
    sender, radiologist = add_token(tokens, "pacs", "sender"), add_token(tokens, "dr-test", "radiologist")
    studies = [write_cr_study(f, tmp_path / f"s{i}.dcm", f"TEST{i}") for i, (f, _) in enumerate(kermany_files[:2] + kermany_files[-2:])]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(models, tokens, tmp_path / "storage", port)
    try:
        body, content_type = stow_body(studies)
        assert httpx.post(f"{base}/dicomweb/studies", content=body, timeout=60,
                          headers={"Authorization": f"Bearer {sender}", "Content-Type": content_type}).status_code == 200
        wait_idle(base, radiologist)
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(base)
            page.fill("#token", "not-a-token")
            page.click("#signin")
            playwright_api.expect(page.locator("#login-error")).to_contain_text("valid bearer token")
            page.fill("#token", radiologist)
            page.click("#signin")
            rows = page.locator("#worklist tbody tr")
            playwright_api.expect(rows).to_have_count(4)
            urgencies = [float(t) for t in rows.locator("td:nth-child(6)").all_inner_texts()]
            states = rows.locator("td:nth-child(2)").all_inner_texts()
            done = [u for u, s in zip(urgencies, states) if s == "done"]
            assert done == sorted(done, reverse=True)  # most urgent first
            rows.first.click()
            playwright_api.expect(page.locator("#findings li").first).to_contain_text("pneumonia")
            page.wait_for_function("document.querySelector('#image').naturalWidth > 0 && document.querySelector('#heatmap').naturalWidth > 0")
            assert page.evaluate("document.querySelector('#heatmap').naturalWidth") == 224  # the overlay is on the source grid
            page.locator("#read-buttons button", has_text="Disagree").first.click()
            playwright_api.expect(page.locator("#read-status")).to_contain_text("Read recorded")
            agreement = page.locator("#agreement tbody tr").first
            playwright_api.expect(agreement).to_contain_text("pneumonia")
            cells = agreement.locator("td").all_inner_texts()
            assert cells[2] == "1" and cells[3] == "0.000"  # one read, in disagreement
            playwright_api.expect(page.locator("#monitoring tbody tr").first).to_contain_text("waiting for 20 studies")
            browser.close()
    finally:
        server.kill()
        server.wait(10)
