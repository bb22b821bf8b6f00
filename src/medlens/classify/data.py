"""Turn a config's dataset reference into data, and data into batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, WeightedRandomSampler

from medlens.config import TrainConfig
from medlens.datasets import ClassificationData, Split, load_folder_dataset, load_medmnist
from medlens.datasets.catalog import resolve_data_dir
from medlens.errors import ConfigError
from medlens.preprocess import Preprocessing, normalize_intensity
from medlens.train.distributed import DistInfo


def load_dataset(
    dataset: str,
    size: int = 28,
    data_dir: str | Path | None = None,
    image_dir: str | None = None,
    image_size: tuple[int, ...] | None = None,
    multilabel: bool = False,
    seed: int = 0,
    folder_options: dict[str, Any] | None = None,
) -> ClassificationData:
    """A MedMNIST catalog name, or the path of a label CSV (a user's folder dataset; ``folder_options`` say how
    to read it: see :meth:`TrainConfig.folder_options`)."""
    if dataset.lower().endswith(".csv"):
        return load_folder_dataset(
            dataset,
            image_dir=image_dir,
            image_size=image_size,
            multilabel=multilabel,
            seed=seed,
            **(folder_options or {}),
        )
    return load_medmnist(dataset, size=size, data_dir=data_dir)


def load_training_data(cfg: TrainConfig, data_dir: str | Path | None) -> tuple[ClassificationData, Split | None]:
    """The data, with its train split cut to ``max_train_samples`` when set; also returns the cut-off rest
    (whose labels semi-supervised training must not see)."""
    data = load_dataset(
        cfg.dataset, cfg.size, data_dir, cfg.image_dir, cfg.image_size, cfg.multilabel, cfg.seed, cfg.folder_options()
    )
    if cfg.modality:
        data.modality = cfg.modality.upper()
    rest = None
    if cfg.max_train_samples and cfg.max_train_samples < len(data.splits["train"]):
        data.splits["train"], rest = subsample_with_rest(data.splits["train"], cfg.max_train_samples, cfg.seed)
    if cfg.max_val_samples and cfg.max_val_samples < len(data.splits["val"]):
        data.splits["val"] = subsample(data.splits["val"], cfg.max_val_samples, cfg.seed)
    return data, rest


def subsample(split: Split, n: int, seed: int) -> Split:
    """A stratified subset (by label; multi-label rows by their first positive label, rows with none apart)."""
    return subsample_with_rest(split, n, seed)[0]


def subsample_with_rest(split: Split, n: int, seed: int) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    labels = split.labels
    strata = labels if labels.ndim == 1 else np.where(labels.any(axis=1), labels.argmax(axis=1), -1)
    values, counts = np.unique(strata, return_counts=True)
    strata = np.where(np.isin(strata, values[counts < 2]), -2, strata)  # one-case classes cannot be stratified: pooled
    if (strata == -2).sum() == 1:
        strata = np.where(strata == -2, values[np.argmax(counts)], strata)  # a lone rare case joins the commonest
    index, rest = train_test_split(np.arange(len(split)), train_size=n, stratify=strata, random_state=seed)
    return take(split, np.sort(index)), take(split, np.sort(rest))


def take(split: Split, index: np.ndarray) -> Split:
    """The rows ``index`` of a split."""
    metadata = [split.metadata[i] for i in index] if split.metadata else []
    return Split(split.images[index], split.labels[index], [split.ids[i] for i in index], metadata)


class ArrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Raw images -> (augmented) -> normalised float tensors; the normalisation is the bundle's."""

    def __init__(
        self,
        split: Split,
        prep: Preprocessing,
        augment: Callable[[np.ndarray], np.ndarray] | None,
        tabular: np.ndarray | None = None,
    ) -> None:
        self.split, self.prep, self.augment, self.tabular = split, prep, augment, tabular

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.split.images[index].astype(np.float32)
        if self.augment is not None:
            image = np.asarray(self.augment(image), dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(normalize_intensity(image, self.prep)))
        if self.tabular is not None:  # a fused model's input: (image, encoded clinical values)
            return (x, torch.from_numpy(self.tabular[index])), torch.as_tensor(self.split.labels[index])
        return x, torch.as_tensor(self.split.labels[index])


def make_loader(
    dataset: ArrayDataset, batch_size: int, seed: int, balanced: bool, task: str, info: DistInfo = DistInfo()
) -> DataLoader:
    """Shuffled, seeded batches; a balanced sampler draws classes equally (binary/multi-class).

    Under torchrun (``info.active``) each process gets a disjoint shard and
    ``batch_size`` is its share of the global batch.
    """
    generator = torch.Generator().manual_seed(seed + info.rank)
    sampler: Sampler[int] | None = None
    if balanced and task != "multilabel":
        counts = np.bincount(dataset.split.labels, minlength=int(dataset.split.labels.max()) + 1)
        weights = 1.0 / counts[dataset.split.labels]
        sampler = WeightedRandomSampler(
            weights.tolist(), num_samples=len(dataset) // info.world_size, generator=generator
        )
    elif info.active:
        sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        drop_last=len(dataset) // info.world_size > batch_size,  # BatchNorm cannot take a last batch of one
    )


def dataset_for_bundle(
    bundle: Any, data: str, size: int | None = None, data_dir: str | Path | None = None
) -> ClassificationData:
    """Load ``data`` the way ``bundle`` was trained: its MedMNIST size, image folder, resize and split seed."""
    cfg = bundle.manifest.get("config", {})
    image_size = cfg.get("image_size")
    image_dir = cfg.get("image_dir")
    root = resolve_data_dir(data_dir)
    if image_dir and not Path(image_dir).is_absolute() and not Path(image_dir).is_dir() and root is not None:
        image_dir = str(root / image_dir)  # a shipped bundle names its images' folder inside the data folder
    options = {k: cfg[k] for k in ("label_column", "negative_label", "group_column", "intensity") if k in cfg}
    if bundle.task == "binary" and data.lower().endswith(".csv"):
        options["positive_label"] = bundle.positive_label  # the CSV's labels in the bundle's order
    data_set = load_dataset(
        data,
        size or cfg.get("size", 28),
        data_dir,
        image_dir,
        tuple(image_size) if image_size else None,
        bundle.task == "multilabel",
        cfg.get("seed", 0),
        options,
    )
    if cfg.get("modality"):
        data_set.modality = str(cfg["modality"]).upper()
    return data_set


def training_data(manifest: dict[str, Any], folder: Path | None = None) -> str:
    """What the bundle was trained on, as ``--data`` would name it: the path it was given for a folder or CSV
    (the manifest's short name would be read as a MedMNIST name), else the MedMNIST name. A shipped bundle's
    label CSV lies in its own ``folder``."""
    given = manifest.get("config", {}).get("dataset")
    name = manifest.get("data", {}).get("dataset")
    if given and Path(given).exists():
        return str(given)
    if given and folder is not None and not Path(given).is_absolute() and (folder / given).is_file():
        return str(folder / given)
    if given and (Path(given).suffix or "/" in str(given)):
        raise ConfigError(
            f"the bundle was trained on {given}, which is not there from here; pass --data with that dataset"
        )
    if not (name or given):
        raise ConfigError("the bundle does not name its training data: pass --data with real images to check on")
    return str(name or given)
