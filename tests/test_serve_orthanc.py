"""A real Orthanc: studies pushed into it come back with an SR and a heatmap Secondary Capture, plus a FHIR report.

Orthanc 1.10 binds every interface, so it runs in a private network namespace
(``unshare -n``, only the loopback up) together with the medlens service; see
tests/orthanc_flow.py. Needs Debian's ``orthanc`` and ``orthanc-dicomweb``
(``.ci/run`` installs them) and the right to create a namespace (root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from medlens.serve.auth import add_token
from medlens.serve.samples import write_cr_study

PRETRAINED = Path(__file__).parents[1] / "src" / "medlens" / "pretrained"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

pytestmark = pytest.mark.skipif(
    shutil.which("Orthanc") is None or not PLUGIN.is_file() or os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs Debian's orthanc + orthanc-dicomweb and root for `unshare -n` (.ci/run sets this up)",
)


def test_a_study_pushed_into_orthanc_comes_back_with_sr_heatmap_and_fhir(
    kermany_files: list[tuple[Path, str]], tmp_path: Path
) -> None:
    images = [kermany_files[0][0], kermany_files[-1][0]]  # one normal, one pneumonia (real test-split radiographs)
    studies = [write_cr_study(p, tmp_path / f"study{i}.dcm", f"TEST{i}") for i, p in enumerate(images)]
    models = tmp_path / "models"
    models.mkdir()
    (models / "cxr-pneumonia").symlink_to(PRETRAINED / "cxr-pneumonia")
    tokens = tmp_path / "tokens.json"
    (tmp_path / "token.json").write_text(json.dumps({"viewer": add_token(tokens, "viewer", "viewer")}))
    script = f"ip link set lo up && exec {sys.executable} {Path(__file__).parent / 'orthanc_flow.py'} " + " ".join(
        map(str, [tmp_path, models, tokens, *studies])
    )
    run = subprocess.run(
        ["unshare", "-n", "--", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())

    uids = [str(pydicom.dcmread(s, stop_before_pixels=True).StudyInstanceUID) for s in studies]
    jobs = {j["study_uid"]: j for j in result["worklist"]}
    assert set(jobs) == set(uids) and all(j["state"] in ("done", "referred") for j in jobs.values())
    assert all(j["result"]["stored_in_pacs"] for j in jobs.values())
    for uid in uids:
        modalities = [m for m, _ in result["orthanc"][uid]]
        assert sorted(modalities) == ["CR", "OT", "SR"], result["orthanc"][uid]  # original, heatmap SC, our SR
        fhir = json.loads(Path(jobs[uid]["result"]["outputs"]["fhir"]).read_text())
        assert fhir["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{uid}"
    after = result["jobs_after_restart"]
    assert after["done"] + after["referred"] == len(uids) and after["queued"] == 0  # nothing fetched or processed twice
