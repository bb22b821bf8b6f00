"""Networks (MONAI's, chosen by registered name) and self-describing model bundles."""

from medlens.models.networks import NetworkSpec, build_network, network_names

__all__ = ["NetworkSpec", "build_network", "network_names"]
