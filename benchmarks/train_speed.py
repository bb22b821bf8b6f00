"""CPU training speed: which settings help, measured on real PneumoniaMNIST batches with the shipped architecture.

Times one pass over 2,048 real training images (ResNet-18, width 0.5, 28 px,
AdamW, cross-entropy) for each setting, best of two passes after a warm-up:
threads, channels-last memory format, bf16 autocast, batch size. Writes
``benchmarks/results/train_speed.json``.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/train_speed.py
"""

from __future__ import annotations

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


def one_pass(x: torch.Tensor, y: torch.Tensor, channels_last: bool = False, bf16: bool = False, batch: int = 64,
             threads: int | None = None) -> float:
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


def main() -> None:
    split = load_medmnist("pneumoniamnist", data_dir=os.environ.get("MEDLENS_DATA_DIR")).split("train")
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
    RESULTS.write_text(json.dumps({"machine": f"{os.cpu_count()}-core CPU, torch {torch.__version__}",
                                   "data": f"{N_IMAGES} PneumoniaMNIST training images, ResNet-18 width 0.5",
                                   "settings": rows}, indent=1))
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
