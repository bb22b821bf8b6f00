"""Fit the out-of-distribution gate of a shipped classifier on its own training data and store it in the package.

    MEDLENS_DATA_DIR=../shared/data python benchmarks/ship_gate.py pneumonia adrenal

Only the gate is added (``ood_gate.npz``, precision in float16, and ``ood_gate`` in ``bundle.json``): weights,
thresholds and calibration stay as shipped. Prints the share of each split's images the gate turns away.
"""

from __future__ import annotations

import json
import sys

from medlens.classify.bundle import load_classifier
from medlens.classify.data import dataset_for_bundle, training_data
from medlens.classify.gate import fit_classifier_gate
from medlens.models.ood import embeddings
from medlens.preprocess.pipeline import normalized_inputs


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    for name in sys.argv[1:]:
        bundle = load_classifier(name)
        data = dataset_for_bundle(bundle, training_data(bundle.manifest, bundle.path))
        gate, info = fit_classifier_gate(bundle.model, data, bundle.preprocessing, bundle.tabular)
        test = data.split("test")
        info["test_flag_rate"] = float(
            (~gate.inside(embeddings(bundle.model, normalized_inputs(test, bundle.preprocessing)))).mean()
        )
        gate.save(bundle.path, half=True)
        manifest = json.loads((bundle.path / "bundle.json").read_text())
        manifest["ood_gate"] = info
        (bundle.path / "bundle.json").write_text(json.dumps(manifest, indent=1))
        print(
            f"{name}: gate on {info['fitted_on']}; flags {info['val_flag_rate']:.1%} of validation, "
            f"{info['test_flag_rate']:.1%} of test images"
        )


if __name__ == "__main__":
    main()
