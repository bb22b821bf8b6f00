"""Trust: calibration, uncertainty with referral, robustness to shift, explanations, subgroups, model cards."""
