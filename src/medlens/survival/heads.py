"""Survival heads by registered name: what the network outputs, its loss, and the survival curve it implies.

- ``cox`` (DeepSurv, Katzman et al. 2018): one output, the log hazard ratio,
  trained with the Cox partial likelihood (torchsurv, Efron ties) over each
  batch's risk sets, so batches must hold several events. The survival curve
  needs a baseline hazard: Breslow's, from a one-covariate Cox model
  (lifelines) of the training risk scores, stored in the bundle as
  ``S(t | r) = S0(t) ** exp(beta * (r - mean_r))``.
- ``discrete`` (logistic hazard, Gensheimer and Narasimhan 2019): time cut
  into ``intervals`` at training event-time quantiles, one output per
  interval, the conditional probability of the event in that interval given
  survival so far. Survival is the running product of ``1 - hazard``; no
  proportional-hazards assumption. A patient censored in an interval counts as
  having survived the intervals before it only.

Every head's risk score is "higher = worse": the log hazard ratio, or minus
the restricted mean survival time up to the last cut.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.registry import Registry


class CoxLoss(nn.Module):
    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        import warnings

        from torchsurv.loss.cox import neg_partial_log_likelihood

        time, event = target[:, 0].float().contiguous(), target[:, 1].bool().contiguous()
        if not event.any():  # a batch without an event has no risk set to compare; nothing to learn from it
            return output.sum() * 0.0
        with warnings.catch_warnings():  # tied times are expected (days); Efron's method is chosen for them
            warnings.filterwarnings("ignore", message="Ties in `time` detected", category=UserWarning)
            return neg_partial_log_likelihood(
                output.reshape(-1).float(), event, time, ties_method="efron", reduction="mean"
            )


class DiscreteHazardLoss(nn.Module):
    def __init__(self, cuts: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("cuts", torch.as_tensor(cuts, dtype=torch.float32))

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        time, event = target[:, 0].float().contiguous(), target[:, 1].float()
        interval = torch.bucketize(time, self.cuts, right=True)  # 0 .. K-1
        k = torch.arange(output.shape[1], device=output.device)[None]
        survived = (k < interval[:, None]).float()
        died_here = (k == interval[:, None]).float() * event[:, None]
        logits = output.float()
        loss = nn.functional.binary_cross_entropy_with_logits(logits, died_here, reduction="none")
        return (loss * (survived + died_here)).sum(dim=1).mean()


def event_time_cuts(time: np.ndarray, event: np.ndarray, intervals: int) -> np.ndarray:
    """Interior cut points (K - 1) at quantiles of the training event times: every interval holds events."""
    quantiles = np.linspace(0, 1, intervals + 1)[1:-1]
    return np.unique(np.quantile(time[event == 1], quantiles))


class Head:
    name = ""

    def loss(self, settings: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def n_outputs(self, settings: dict[str, Any]) -> int:
        raise NotImplementedError

    def risk(self, output: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def survival(self, output: np.ndarray, settings: dict[str, Any], times: np.ndarray) -> np.ndarray:
        """``(N, len(times))`` probabilities of being event-free at each time."""
        raise NotImplementedError


class CoxHead(Head):
    name = "cox"

    def loss(self, settings: dict[str, Any]) -> nn.Module:
        return CoxLoss()

    def n_outputs(self, settings: dict[str, Any]) -> int:
        return 1

    def risk(self, output: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
        return output.reshape(-1)

    def fit_baseline(self, risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> dict[str, Any]:
        """Breslow's baseline survival of a Cox model on the risk score alone (lifelines), for the bundle."""
        import pandas as pd
        from lifelines import CoxPHFitter

        frame = pd.DataFrame({"risk": risk, "time": time, "event": event})
        cph = CoxPHFitter().fit(frame, duration_col="time", event_col="event")
        baseline = cph.baseline_survival_
        return {
            "beta": float(cph.params_["risk"]),
            "mean_risk": float(risk.mean()),  # lifelines centres covariates on the mean
            "times": baseline.index.to_numpy(dtype=float).tolist(),
            "s0": baseline.iloc[:, 0].to_numpy(dtype=float).tolist(),
        }

    def survival(self, output: np.ndarray, settings: dict[str, Any], times: np.ndarray) -> np.ndarray:
        base = settings["baseline"]
        s0 = np.interp(
            times, base["times"], base["s0"], left=1.0
        )  # a step function sampled finely; interp between steps
        factor = np.exp(base["beta"] * (self.risk(output, settings) - base["mean_risk"]))
        return s0[None, :] ** factor[:, None]


class DiscreteHead(Head):
    name = "discrete"

    def loss(self, settings: dict[str, Any]) -> nn.Module:
        return DiscreteHazardLoss(np.asarray(settings["cuts"]))

    def n_outputs(self, settings: dict[str, Any]) -> int:
        return len(settings["cuts"]) + 1

    def _curve(self, output: np.ndarray) -> np.ndarray:
        hazard = 1 / (1 + np.exp(-output))
        return np.cumprod(1 - hazard, axis=1)  # survival at the end of each interval

    def survival(self, output: np.ndarray, settings: dict[str, Any], times: np.ndarray) -> np.ndarray:
        cuts = np.asarray(settings["cuts"])
        curve = np.concatenate([np.ones((len(output), 1)), self._curve(output)], axis=1)
        return curve[:, np.searchsorted(cuts, times, side="right")]  # step: S stays until the next cut is passed

    def risk(self, output: np.ndarray, settings: dict[str, Any]) -> np.ndarray:
        cuts = np.asarray(settings["cuts"])
        widths = np.diff(np.concatenate([[0.0], cuts]))
        curve = np.concatenate([np.ones((len(output), 1)), self._curve(output)], axis=1)[:, : len(cuts)]
        return -(curve * widths[None]).sum(axis=1)  # minus the restricted mean survival time to the last cut


HEADS: Registry[Head] = Registry("survival head")
HEADS.add("cox", CoxHead())
HEADS.add("discrete", DiscreteHead())
