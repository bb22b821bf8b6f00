"""Where each dataset comes from: official download address, checksum, labels, task.

The MedMNIST table (``medmnist_catalog.json``) is the official release's own
(Zenodo record 10519652). A dataset file is looked for, in order, in the
``data_dir`` argument, in ``$MEDLENS_DATA_DIR`` (and its ``medmnist/``
subfolder), and in ``~/.cache/medlens``; if absent it is downloaded from the
official address when the machine is online, and verified against the MD5.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from medlens.errors import ChecksumError, ConfigError, DatasetNotFoundError
from medlens.registry import Registry

log = logging.getLogger(__name__)

DATA_DIR_ENV = "MEDLENS_DATA_DIR"
DEFAULT_CACHE = Path.home() / ".cache" / "medlens"


@dataclass(frozen=True)
class DatasetFile:
    url: str
    md5: str
    filename: str


@dataclass(frozen=True)
class DatasetInfo:
    """One catalog entry: what a MedMNIST set is and where its files live."""

    name: str
    task: str  # binary | multiclass | multilabel | ordinal
    dims: int
    n_channels: int
    labels: tuple[str, ...]
    n_samples: dict[str, int]
    license: str
    files: dict[int, DatasetFile]  # image size -> file


@cache
def _catalog() -> Registry[DatasetInfo]:
    raw = json.loads(resources.files("medlens.datasets").joinpath("medmnist_catalog.json").read_text())
    registry: Registry[DatasetInfo] = Registry("dataset")
    for name, entry in raw["datasets"].items():
        files = {int(size): DatasetFile(**f) for size, f in entry.pop("files").items()}
        entry["labels"] = tuple(entry["labels"])
        registry.add(name, DatasetInfo(name=name, files=files, **entry))
    return registry


def dataset_names() -> list[str]:
    return _catalog().names()


def get_dataset_info(name: str) -> DatasetInfo:
    """Catalog entry by name; an unknown name raises with "did you mean"."""
    return _catalog().get(name.lower())


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The local data folder: the argument, else ``$MEDLENS_DATA_DIR``, else None."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else None


def dataset_file(name: str, size: int) -> DatasetFile:
    info = get_dataset_info(name)
    if size not in info.files:
        sizes = ", ".join(str(s) for s in sorted(info.files))
        raise ConfigError(f"dataset {name!r} has no size {size}; available sizes: {sizes}")
    return info.files[size]


def resolve_dataset_file(name: str, size: int = 28, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Find a MedMNIST ``.npz`` locally, or download and verify it.

    Raises DatasetNotFoundError naming the file, the folders searched and the
    official address when the file is absent and cannot be downloaded.
    """
    entry = dataset_file(name, size)
    folders = [d for d in (resolve_data_dir(data_dir), DEFAULT_CACHE) if d is not None]
    candidates = [p for d in folders for p in (d / entry.filename, d / "medmnist" / entry.filename)]
    for path in candidates:
        if path.is_file():
            _check_local(path, entry)
            return path
    if not download:
        raise _not_found(entry, candidates, "downloading is switched off")
    target = DEFAULT_CACHE / entry.filename
    try:
        _download(entry, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise _not_found(entry, candidates, f"the download failed ({exc})") from exc
    return target


def _not_found(entry: DatasetFile, searched: list[Path], why: str) -> DatasetNotFoundError:
    places = ", ".join(str(p) for p in searched)
    return DatasetNotFoundError(
        f"{entry.filename} not found (looked in: {places}) and {why}. "
        f"Download it from {entry.url} (MD5 {entry.md5}) and put it in a folder named by "
        f"--data-dir or ${DATA_DIR_ENV}."
    )


def file_md5(path: Path) -> str:
    return _file_digests(path.resolve(), path.stat().st_size, path.stat().st_mtime_ns)[0]


def file_sha256(path: Path) -> str:
    return _file_digests(path.resolve(), path.stat().st_size, path.stat().st_mtime_ns)[1]


@cache
def _file_digests(path: Path, size: int, mtime_ns: int) -> tuple[str, str]:
    """MD5 (the catalog's checksum) and SHA-256 (recorded in bundles) in one read, cached per file version."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()


def _check_local(path: Path, entry: DatasetFile) -> None:
    # A local copy may be a legitimate rebuild (same images, other order); its
    # contents are validated when read, so a different MD5 is logged, not fatal.
    if file_md5(path) != entry.md5:
        log.info(
            "%s differs from the official file (MD5 %s); its split sizes are checked on load", path.name, entry.md5
        )


def _download(entry: DatasetFile, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    log.info("downloading %s", entry.url)
    with urllib.request.urlopen(entry.url, timeout=60) as response, partial.open("wb") as out:
        shutil.copyfileobj(response, out)
    actual = file_md5(partial)
    if actual != entry.md5:
        partial.unlink(missing_ok=True)
        raise ChecksumError(
            f"{entry.filename} downloaded from {entry.url} has MD5 {actual}, expected {entry.md5}; "
            "the download was corrupted or the file changed upstream: try again"
        )
    partial.replace(target)
