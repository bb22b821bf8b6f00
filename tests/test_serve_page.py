"""The worklist page in a real headless Chromium (Debian's, driven by Playwright) against a real `medlens serve`."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from medlens.serve.samples import stow_body, write_cr_study, write_smear_image
from medlens.serve.store import Store
from tests.serve_helpers import free_port, make_service, start_server, wait_idle

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")


@contextmanager
def serving(
    tmp_path: Path, studies: list[Path], models: tuple[str, ...] = ("cxr-pneumonia",)
) -> Iterator[tuple[str, dict[str, str]]]:
    """A real `medlens serve` with shipped ``models`` that has processed ``studies``: (base URL, tokens by role)."""
    service = make_service(tmp_path, models)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(service["config"].models, service["config"].tokens, tmp_path / "storage", port)
    try:
        body, content_type = stow_body(studies)
        assert (
            httpx.post(
                f"{base}/dicomweb/studies",
                content=body,
                timeout=60,
                headers={**service["headers"]["sender"], "Content-Type": content_type},
            ).status_code
            == 200
        )
        wait_idle(base, service["tokens"]["viewer"])
        yield base, service["tokens"]
    finally:
        server.kill()
        server.wait(10)


XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def test_worklist_study_view_a_read_that_moves_agreement_and_header_text_shown_as_text(
    kermany_files: list[tuple[Path, str]], tmp_path: Path
) -> None:
    """The page end to end; then text a hostile header got into a job (a failure reason, a finding's name) is
    shown, never run. The reason is planted in the job store as a failing read of such a header would leave it."""
    studies = [
        write_cr_study(f, tmp_path / f"s{i}.dcm", f"TEST{i}")
        for i, (f, _) in enumerate(kermany_files[:2] + kermany_files[-2:])
    ]
    with serving(tmp_path, studies) as (base, tokens):
        radiologist = tokens["radiologist"]
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(base)
            assert not page.locator("#app").is_visible()  # nothing of the worklist before sign-in
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
            page.wait_for_function(
                "document.querySelector('#image').naturalWidth > 0 && document.querySelector('#heatmap').naturalWidth > 0"
            )
            assert (
                page.evaluate("document.querySelector('#heatmap').naturalWidth") == 224
            )  # the overlay is on the source grid
            page.locator("#read-buttons button", has_text="Disagree").first.click()
            playwright_api.expect(page.locator("#read-status")).to_contain_text("Read recorded")
            agreement = page.locator("#agreement tbody tr").first
            playwright_api.expect(agreement).to_contain_text("pneumonia")
            cells = agreement.locator("td").all_inner_texts()
            assert cells[2] == "1" and cells[3] == "0.000"  # one read, in disagreement
            playwright_api.expect(page.locator("#monitoring tbody tr").first).to_contain_text(
                "waiting for 20 studies", timeout=90_000
            )  # the first report reads the model's 143 validation films

            store = Store(f"sqlite:///{tmp_path / 'storage' / 'medlens.db'}", "test")
            jobs = sorted(j["id"] for j in store.worklist() if j["state"] != "skipped")
            store.finish(jobs[-1], "failed", None, reason=f"part 0: RescaleSlope holds {XSS}; the header is corrupt")
            finding = {"name": XSS, "probability": 0.9, "present": True, "threshold": 0.5}
            store.finish(jobs[-2], "done", {"findings": [finding], "refer": False, "outputs": {}}, urgency=0.9)
            store.close()
            page.reload()  # signs in again with the token kept for this tab
            playwright_api.expect(rows.filter(has_text="onerror")).to_have_count(1)  # the finding's name, as text
            rows.filter(has_text="failed").first.click()
            playwright_api.expect(page.locator("#findings li.note")).to_contain_text("RescaleSlope holds <img src=x")
            assert page.locator("img[src='x']").count() == 0 and page.locator("#findings script").count() == 0
            assert page.evaluate("window.__xss === undefined")
            browser.close()
        policy = httpx.get(base).headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_a_blood_smear_gets_its_boxes_on_the_page_and_its_counts_in_fhir(data_dir: Path, tmp_path: Path) -> None:
    """A DICOM smear image through the detector: the page shows the counts and the image with its boxes drawn at the
    image's own size; the FHIR report holds one count per cell type."""
    source = data_dir / "microscopy_bccd_detection" / "JPEGImages" / "BloodImage_00007.jpg"
    study = write_smear_image(source, tmp_path / "smear.dcm", "SMEAR1")
    with serving(tmp_path, [study], models=("blood-cells",)) as (base, tokens):
        viewer = {"Authorization": f"Bearer {tokens['viewer']}"}
        job = next(j for j in httpx.get(f"{base}/api/worklist", headers=viewer).json() if j["state"] != "skipped")
        assert job["state"] == "done", job
        fhir = httpx.get(f"{base}/fhir/DiagnosticReport/medlens-{job['id']}", headers=viewer).json()
        counts = {o["code"]["text"].split(" count")[0]: o["valueQuantity"]["value"] for o in fhir["contained"]}
        assert set(counts) == {"Platelets", "RBC", "WBC"} and counts["WBC"] >= 1 and counts["RBC"] > 5
        assert sum(counts.values()) == len(
            httpx.get(f"{base}/api/jobs/{job['id']}", headers=viewer).json()["result"]["detections"]
        )
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(base)
            page.fill("#token", tokens["viewer"])
            page.click("#signin")
            row = page.locator("#worklist tbody tr").first
            playwright_api.expect(row).to_contain_text(f"WBC {counts['WBC']}")
            row.click()
            playwright_api.expect(page.locator("#findings")).to_contain_text(f"RBC: {counts['RBC']} found")
            page.wait_for_function("document.querySelector('#heatmap').naturalWidth > 0")
            assert page.evaluate("document.querySelector('#heatmap').naturalWidth") == 640  # boxes on the source image
            browser.close()
