"""Differential privacy for a site's local training: DP-SGD through Opacus, one budget for the whole federation.

Every pass a hospital makes over its images spends privacy. medlens fixes the
total budget (epsilon at a stated delta) before the first round, asks Opacus'
RDP accountant for the noise multiplier that spends exactly that budget over
all rounds' local epochs at the site's sampling rate, and reports after each
round what the site has spent so far. Each site has its own sampling rate
(batch / its size), so each gets its own noise; the federation reports the
largest epsilon any site has spent, which is the guarantee that holds for every
patient in it. The guarantee is per image (record-level DP); a patient with
several images is covered only up to that multiplicity.

DP-SGD needs per-sample gradients, so no layer may mix samples in a batch:
BatchNorm is swapped for GroupNorm (``NetworkSpec.norm = "group"``, Opacus'
``ModuleValidator.fix``) on the server and every client alike. Opacus' secure
random generator (torchcsprng) is not installed; the noise comes from PyTorch's
ordinary generator, fine for research and benchmarks, and the bundle says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from medlens.errors import ConfigError

# Opacus' RDP orders plus larger ones: early rounds of a large budget spend little, and their tightest bound sits
# beyond Opacus' default orders (it then warns and reports a looser epsilon)
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [64, 80, 96, 128, 192, 256, 384, 512, 1024]


@dataclass(frozen=True)
class PrivacyBudget:
    """The whole federation's budget per site: (epsilon, delta)-DP for each image of that site's training set."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0  # per-sample gradient clipping bound

    def __post_init__(self) -> None:
        if self.epsilon <= 0 or not 0 < self.delta < 1 or self.max_grad_norm <= 0:
            raise ConfigError(f"federate.dp: epsilon and max_grad_norm must be positive and 0 < delta < 1, got {self}")


def sample_rate(n_images: int, batch_size: int) -> float:
    """Poisson sampling rate that gives batches of ``batch_size`` on average."""
    return min(1.0, batch_size / max(n_images, 1))


def noise_multiplier(budget: PrivacyBudget, n_images: int, batch_size: int, total_epochs: int) -> float:
    """The smallest noise that keeps ``total_epochs`` local epochs (all rounds together) within the budget."""
    from opacus.accountants.utils import get_noise_multiplier

    if budget.delta >= 1 / max(n_images, 1):
        raise ConfigError(
            f"federate.dp_delta: {budget.delta} is not below 1/{n_images} (1 / the site's images); a delta that large "
            "allows leaking whole records; use 1e-5"
        )
    return float(
        get_noise_multiplier(
            target_epsilon=budget.epsilon,
            target_delta=budget.delta,
            sample_rate=sample_rate(n_images, batch_size),
            epochs=total_epochs,
            accountant="rdp",
            alphas=ALPHAS,
        )
    )


def epsilon_spent(sigma: float, n_images: int, batch_size: int, epochs_done: int, delta: float) -> float:
    """Epsilon a site has spent after ``epochs_done`` local epochs at noise ``sigma`` (RDP accountant, as Opacus counts steps)."""
    from opacus.accountants import RDPAccountant

    q = sample_rate(n_images, batch_size)
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, int(epochs_done / q))]
    return float(accountant.get_epsilon(delta, alphas=ALPHAS))
