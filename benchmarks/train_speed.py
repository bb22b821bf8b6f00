"""CPU training speed: which settings help, measured on real PneumoniaMNIST batches with the shipped architecture.

Times one pass over 2,048 real training images (ResNet-18, width 0.5, 28 px,
AdamW, cross-entropy) for each setting, best of two passes after a warm-up:
threads, channels-last memory format, bf16 autocast, batch size. The
``data`` part times the input pipeline the trainer really uses (ArrayDataset
+ DataLoader with the shipped X-ray augmentation) against normalised arrays
cached once, and DataLoader worker processes. Writes
``benchmarks/results/train_speed.json``.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/train_speed.py [--parts settings data]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from medlens.datasets import load_medmnist
from medlens.models.networks import NetworkSpec, build_network

RESULTS = Path(__file__).parent / "results" / "train_speed.json"
N_IMAGES = 2048
SETTINGS = {
    "baseline: fp32, contiguous, batch 64, all threads": {},
    "channels-last (medlens default)": {"channels_last": True},
    "channels-last + bf16 autocast": {"channels_last": True, "bf16": True},
    "channels-last, batch 128": {"channels_last": True, "batch": 128},
    "channels-last, batch 32": {"channels_last": True, "batch": 32},
    "channels-last, 1 thread": {"channels_last": True, "threads": 1},
}


def one_pass(
    x: torch.Tensor,
    y: torch.Tensor,
    channels_last: bool = False,
    bf16: bool = False,
    batch: int = 64,
    threads: int | None = None,
) -> float:
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    model = build_network(NetworkSpec("resnet18", 2, 1, 2, (28, 28), width=0.5))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for repeat in range(3):  # the first pass warms up (allocator, kernels); the best of the other two counts
        started = time.perf_counter()
        for i in range(0, len(x), batch):
            xb = x[i : i + batch].contiguous(memory_format=fmt)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(xb), y[i : i + batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if repeat:
            times.append(time.perf_counter() - started)
    return min(times)


def loader_pass(data: object, augment: bool, cached: bool, workers: int) -> dict[str, float]:
    """Seconds per pass through the trainer's input pipeline alone, and with the model training on it."""
    from torch.utils.data import DataLoader, TensorDataset

    from medlens.classify.data import ArrayDataset
    from medlens.classify.train import make_preprocessing
    from medlens.config import TrainConfig
    from medlens.datasets.base import Split
    from medlens.preprocess.augment import build_augmentation
    from medlens.preprocess.pipeline import normalized_inputs

    train = data.splits["train"]
    part = Split(train.images[:N_IMAGES], train.labels[:N_IMAGES], train.ids[:N_IMAGES], [])
    prep = make_preprocessing(TrainConfig(), data)
    if cached:  # normalised once, kept as one tensor: only possible without per-epoch augmentation
        dataset = TensorDataset(torch.from_numpy(normalized_inputs(part, prep)), torch.from_numpy(part.labels))
    else:
        dataset = ArrayDataset(part, prep, build_augmentation("xray", 2, 0) if augment else None)
    loader = DataLoader(
        dataset,
        batch_size=64,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=(lambda _: torch.set_num_threads(1)) if workers else None,
    )
    started = time.perf_counter()
    for _ in loader:
        pass
    data_only = time.perf_counter() - started
    torch.manual_seed(0)
    model = (
        build_network(NetworkSpec("resnet18", 2, 1, 2, (28, 28), width=0.5))
        .to(memory_format=torch.channels_last)
        .train()
    )
    opt, loss_fn, times = torch.optim.AdamW(model.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss(), []
    for repeat in range(3):
        started = time.perf_counter()
        for xb, yb in loader:
            loss = loss_fn(model(xb.contiguous(memory_format=torch.channels_last)), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if repeat:
            times.append(time.perf_counter() - started)
    return {"data_seconds": data_only, "train_seconds": min(times)}


DATA_SETTINGS = {
    "trainer pipeline, X-ray augmentation, no workers (medlens default)": {
        "augment": True,
        "cached": False,
        "workers": 0,
    },
    "trainer pipeline, X-ray augmentation, 2 worker processes": {"augment": True, "cached": False, "workers": 2},
    "trainer pipeline, no augmentation": {"augment": False, "cached": False, "workers": 0},
    "normalised arrays cached once (no augmentation)": {"augment": False, "cached": True, "workers": 0},
}


def run_data(data: object) -> dict[str, dict]:
    rows = {name: {**loader_pass(data, **kw), **kw} for name, kw in DATA_SETTINGS.items()}
    print("| input pipeline | data alone s | data + training s | share of the pass spent on data |\n|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['data_seconds']:.2f} | {r['train_seconds']:.2f} | {r['data_seconds'] / r['train_seconds']:.0%} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", nargs="+", default=["settings", "data"], choices=["settings", "data"])
    args = parser.parse_args()
    data = load_medmnist("pneumoniamnist", data_dir=os.environ.get("MEDLENS_DATA_DIR"))
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update(
        {
            "machine": f"{os.cpu_count()}-core CPU, torch {torch.__version__}",
            "data": f"{N_IMAGES} PneumoniaMNIST training images, ResNet-18 width 0.5",
        }
    )
    if "data" in args.parts:
        results["input_pipeline"] = run_data(data)
    if "settings" in args.parts:
        results["settings"] = run_settings(data.split("train"))
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"written {RESULTS}")


def run_settings(split: object) -> dict[str, dict]:
    x = torch.from_numpy((split.images[:N_IMAGES].astype(np.float32) / 255.0 - 0.5) / 0.5)
    y = torch.from_numpy(split.labels[:N_IMAGES].astype(np.int64))
    rows = {}
    for name, kwargs in SETTINGS.items():
        seconds = one_pass(x, y, **kwargs)
        rows[name] = {"seconds_per_2048_images": seconds, "images_per_s": N_IMAGES / seconds, **kwargs}
    base = rows[next(iter(rows))]["images_per_s"]
    print("| setting | images/s | vs baseline |\n|---|---|---|")
    for name, r in rows.items():
        r["speedup"] = r["images_per_s"] / base
        print(f"| {name} | {r['images_per_s']:.0f} | {r['speedup']:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
