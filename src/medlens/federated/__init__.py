"""Learning across hospitals without sharing data: simulated sites, Flower federation, Opacus DP."""
