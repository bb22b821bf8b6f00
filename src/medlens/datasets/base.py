"""The in-memory form every classification dataset is turned into."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medlens.errors import DataError

TASKS = ("binary", "multiclass", "multilabel", "ordinal")


@dataclass
class Split:
    """Images of one split, channel-first: ``(N, C, H, W)`` or ``(N, C, D, H, W)``.

    ``labels`` is ``(N,)`` int class indices, or ``(N, K)`` 0/1 for multi-label.
    ``ids`` names each item (file name or ``split:index``) for error messages and outputs;
    ``metadata`` holds a folder CSV's other columns per item (age, sex, site, ...), if any.
    """

    images: np.ndarray
    labels: np.ndarray
    ids: list[str]
    metadata: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ClassificationData:
    """A labelled dataset with train/val/test splits and a description of its images."""

    name: str
    task: str
    label_names: tuple[str, ...]
    splits: dict[str, Split]
    modality: str = "unknown"
    intensity_range: tuple[float, float] = (0.0, 255.0)
    source: dict[str, str] = field(default_factory=dict)  # file, checksum, license

    @property
    def spatial_dims(self) -> int:
        return next(iter(self.splits.values())).images.ndim - 2

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(next(iter(self.splits.values())).images.shape[2:])

    @property
    def n_channels(self) -> int:
        return int(next(iter(self.splits.values())).images.shape[1])

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(f"dataset {self.name!r} has no {name!r} split; it has: {', '.join(self.splits)}")
        return self.splits[name]

    def validate(self) -> None:
        """Refuse data that would train a silently wrong model: a split missing a class, NaN/inf pixels."""
        n_classes = len(self.label_names)
        for split_name, split in self.splits.items():
            finite = (
                np.isfinite(split.images.reshape(len(split), -1)).all(axis=1)
                if split.images.dtype.kind == "f"
                else None
            )
            if finite is not None and not finite.all():
                bad = np.where(~finite)[0]
                raise DataError(
                    f"{self.name}: {split_name} image {split.ids[bad[0]]!r} contains NaN or inf values "
                    f"({len(bad)} such images); fix or remove them"
                )
            if split_name == "test" or self.task == "multilabel":
                continue
            present = set(np.unique(split.labels).tolist())
            missing = [self.label_names[c] for c in range(n_classes) if c not in present]
            if missing:
                raise DataError(
                    f"{self.name}: the {split_name} split has no example of class(es) {', '.join(missing)}; "
                    "every class must appear in train and val (re-split, e.g. stratified by label)"
                )
