"""The kinds of model bundle and ``open_bundle``: any bundle, by shipped name or folder, as its kind's class.

A new kind of model plugs in here: a bundle class (a :class:`BundleBase` with
its ``kind``, ``supports``, ``from_manifest``, ``summary`` and ``predict``), registered below.
"""

from __future__ import annotations

from pathlib import Path

from medlens.bundle.manifest import BundleBase, license_of, read_manifest
from medlens.classify.bundle import ClassifierBundle
from medlens.detect.bundle import DetectorBundle
from medlens.errors import ModelError
from medlens.recon.bundle import EnhancerBundle
from medlens.registry import Registry
from medlens.segment.bundle import SegmenterBundle
from medlens.survival.bundle import SurvivalBundle

AnyBundle = ClassifierBundle | SegmenterBundle | SurvivalBundle | EnhancerBundle | DetectorBundle

KINDS: Registry[type[BundleBase]] = Registry("kind of bundle")
for _cls in (ClassifierBundle, SegmenterBundle, SurvivalBundle, EnhancerBundle, DetectorBundle):
    KINDS.add(_cls.kind, _cls)


def kinds_supporting(operation: str) -> list[str]:
    return [name for name in KINDS.names() if operation in KINDS.get(name).supports]


def describe(name_or_path: str | Path) -> dict[str, str]:
    """One line about a bundle from its manifest (nothing is loaded): kind, task, labels, input, test score, and the
    training data with its licence."""
    path, manifest = read_manifest(name_or_path)
    data = manifest.get("data", {})
    summary = KINDS.get(manifest["kind"]).summary(manifest)
    return {
        "name": path.name,
        "kind": manifest["kind"],
        **summary,
        "data": f"{data.get('dataset', '')} ({license_of(manifest)})",
    }


def open_bundle(name_or_path: str | Path, needs: str | None = None, device: str = "cpu") -> AnyBundle:
    """The bundle ``name_or_path`` (a shipped name such as ``cxr-pneumonia``, or a folder) loaded as its kind's class.

    ``needs``: an operation (``explain``, ``calibrate``, ...) the caller will run; a bundle of a kind that
    cannot gets a :class:`ModelError` saying which kinds can, before any network is built.

    >>> import medlens
    >>> bundle = medlens.open_bundle("pneumonia-28px")
    >>> bundle.kind, bundle.label_names
    ('classifier', ['normal', 'pneumonia'])
    """
    path, manifest = read_manifest(name_or_path)
    cls = KINDS.get(manifest["kind"])
    if needs is not None and needs not in cls.supports:
        raise ModelError(
            f"{path.name} is a {manifest['kind']} bundle ({manifest.get('task')}); {needs} takes "
            f"{' or '.join(kinds_supporting(needs)) or 'no'} bundles"
        )
    return cls.from_manifest(path, manifest, device=device)  # the manifest is read once
