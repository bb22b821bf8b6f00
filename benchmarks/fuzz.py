"""Long fuzzing campaigns on the DICOM reader and the STOW-RS upload parser: cases, escapes, aborts, hangs.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/fuzz.py --minutes 10

Runs the two targets side by side (one child process each, so both cores work), each case a mutation of a real
file fixed by its seed (see tests/fuzz_harness.py); a case that aborts its process or runs over 10 s is counted and
the process replaced. Writes benchmarks/results/fuzz.json with the seeds of every finding, to replay them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the harness lives beside the tests

from tests.fuzz_harness import corpus_sources, run  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "fuzz.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall time per target (both run at once)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--data-dir", default=os.environ.get("MEDLENS_DATA_DIR", "../shared/data"))
    args = parser.parse_args()
    budget, seeds = args.minutes * 60, range(args.first_seed, args.first_seed + 10_000_000)
    started = time.time()
    with ThreadPoolExecutor(2) as pool:
        futures = {t: pool.submit(run, t, seeds, args.data_dir, 10.0, budget) for t in ("reader", "upload")}
        tallies = {t: f.result() for t, f in futures.items()}
    result = {
        "what": "mutations of real files (byte flips, truncation, trusted-tag values, length fields, nested "
        "sequences; broken multipart framing for uploads), one child process per target",
        "corpus": [str(p.relative_to(args.data_dir)) for p in corpus_sources(Path(args.data_dir))]
        + ["cxr_kermany_224 test image as CR: uncompressed, JPEG 2000, deflated"],
        "first_seed": args.first_seed,
        "minutes_per_target": args.minutes,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "targets": {t: tally.as_dict() for t, tally in tallies.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'target':8} {'cases':>8} {'ok':>8} {'escapes':>8} {'aborts':>7} {'hangs':>6} {'cases/s':>8}")
    for target, tally in tallies.items():
        o = tally.outcomes
        print(
            f"{target:8} {tally.cases:>8} {o.get('ok', 0):>8} {o.get('escape', 0):>8} {o.get('abort', 0):>7} {o.get('hang', 0):>6} "
            f"{tally.cases / max(tally.seconds, 1e-9):>8.1f}"
        )
    for target, tally in tallies.items():
        for finding in tally.findings[:10]:
            print(f"  {target} seed {finding['seed']}: {finding['outcome']}: {finding['detail'][:160]}")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
