"""The kinds of model bundle and ``open_bundle``: any bundle, by shipped name or folder, as its kind's class.

A new kind of model plugs in here: a bundle class (a :class:`BundleBase` with
its ``kind``, ``supports`` and ``predict``) and its loader, registered below.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlens.bundle.manifest import BundleBase, license_of, read_manifest
from medlens.classify.bundle import ClassifierBundle, load_classifier
from medlens.errors import ModelError
from medlens.recon.bundle import EnhancerBundle, load_enhancer
from medlens.registry import Registry
from medlens.segment.bundle import SegmenterBundle, load_segmenter
from medlens.survival.bundle import SurvivalBundle, load_survival

AnyBundle = ClassifierBundle | SegmenterBundle | SurvivalBundle | EnhancerBundle

KINDS: Registry[tuple[type[BundleBase], Callable[..., Any]]] = Registry("kind of bundle")
KINDS.add("classifier", (ClassifierBundle, load_classifier))
KINDS.add("segmenter", (SegmenterBundle, load_segmenter))
KINDS.add("survival", (SurvivalBundle, load_survival))
KINDS.add("enhancer", (EnhancerBundle, load_enhancer))


def kinds_supporting(operation: str) -> list[str]:
    return [name for name in KINDS.names() if operation in KINDS.get(name)[0].supports]


def describe(name_or_path: str | Path) -> dict[str, str]:
    """One line about a bundle from its manifest (nothing is loaded): kind, task, labels, input, test score, and the
    training data with its licence."""
    path, manifest = read_manifest(name_or_path)
    data = manifest.get("data", {})
    summary = KINDS.get(manifest["kind"])[0].summary(manifest)
    return {
        "name": path.name,
        "kind": manifest["kind"],
        **summary,
        "data": f"{data.get('dataset', '')} ({license_of(manifest)})",
    }


def open_bundle(name_or_path: str | Path, needs: str | None = None, device: str = "cpu") -> AnyBundle:
    """The bundle ``name_or_path`` (a shipped name such as ``pneumonia``, or a folder) loaded as its kind's class.

    ``needs``: an operation (``explain``, ``calibrate``, ...) the caller will run; a bundle of a kind that
    cannot gets a :class:`ModelError` saying which kinds can, before any network is built.

    >>> import medlens
    >>> bundle = medlens.open_bundle("pneumonia")
    >>> bundle.kind, bundle.label_names
    ('classifier', ['normal', 'pneumonia'])
    """
    path, manifest = read_manifest(name_or_path)
    cls, loader = KINDS.get(manifest["kind"])
    if needs is not None and needs not in cls.supports:
        raise ModelError(
            f"{path.name} is a {manifest['kind']} bundle ({manifest.get('task')}); {needs} takes "
            f"{' or '.join(kinds_supporting(needs)) or 'no'} bundles"
        )
    return loader(path, device=device) if cls is ClassifierBundle else loader(path)
