"""Prefect Block types holding connection settings and secrets (never in config files or code)."""
