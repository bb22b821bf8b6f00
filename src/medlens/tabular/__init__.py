"""Clinical (tabular) inputs: encoding fitted on training data, leakage checks, baselines."""
