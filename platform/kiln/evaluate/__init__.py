"""Offline and online evaluation: metrics, drift and promotion gates."""
