"""Batch prediction over thousands of files: streamed, parallel decoding, bounded memory, resumable.

Files are read and checked a batch at a time by a thread pool (decoders release
the GIL for most of their work), predicted, and the batch's rows are appended
to the CSV or JSONL output and flushed to disk before the next batch starts.
Memory therefore stays at one batch of images whatever the number of files.
Rerunning the same command skips every file already in the output, so a crash,
a kill or Ctrl-C loses at most the batch in flight; a half-written last line
(the process died mid-write) is dropped and that file is predicted again.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlens.classify.predict import RECORD_COLUMNS, FilePrediction, predict_files, prediction_record
from medlens.errors import ConfigError

if TYPE_CHECKING:
    from medlens.classify.bundle import ClassifierBundle

STREAM_SUFFIXES = (".csv", ".jsonl")


@dataclass
class StreamReport:
    written: int = 0
    skipped_done: int = 0
    failed: int = 0


def done_files(out: Path) -> set[str]:
    """Files already in a previous run's output; a torn last line is cut off so the file can be appended to."""
    if not out.is_file() or out.stat().st_size == 0:
        return set()
    data = out.read_bytes()
    if not data.endswith(b"\n"):  # killed mid-line: drop the partial row
        data = data[: data.rfind(b"\n") + 1]
        out.write_bytes(data)
    lines = data.decode("utf-8").splitlines()
    if out.suffix.lower() == ".jsonl":
        return {json.loads(line)["file"] for line in lines if line.strip()}
    return {row["file"] for row in csv.DictReader(lines)}


def _chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def stream_predictions(
    bundle: ClassifierBundle,
    files: list[Path],
    out: Path,
    adapt: bool = False,
    batch_size: int = 64,
    backend: str = "auto",
    workers: int | None = None,
    on_batch: Callable[[int], None] | None = None,
    clinical: Any = None,
) -> StreamReport:
    """Predict ``files`` into ``out`` (.csv or .jsonl), appending batch by batch; resume from what ``out`` holds."""
    if out.suffix.lower() not in STREAM_SUFFIXES:
        raise ConfigError(f"streamed output must be .csv or .jsonl, got {out.name!r} (JSON cannot be appended to)")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_files(out)
    todo = [f for f in files if str(f) not in done]
    report = StreamReport(skipped_done=len(files) - len(todo))
    names = bundle.label_names
    fields = ["file", *names, *RECORD_COLUMNS]
    new_csv = out.suffix.lower() == ".csv" and not done and not (out.is_file() and out.stat().st_size)
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool, out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields) if out.suffix.lower() == ".csv" else None
        if writer is not None and new_csv:
            writer.writeheader()
        for chunk in _chunks(todo, batch_size):
            rows: list[FilePrediction] = predict_files(
                bundle, chunk, adapt, len(chunk), backend, reader=pool.map, clinical=clinical
            )
            for row in rows:
                record = prediction_record(row, names)
                if writer is not None:
                    writer.writerow(record)
                else:
                    f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
            report.written += len(rows)
            report.failed += sum(bool(r.error) for r in rows)
            if on_batch is not None:
                on_batch(len(rows))
    return report
