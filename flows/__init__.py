"""Deployable Prefect flows: thin wiring, parameters and artifacts. The rules live in ``tasks/``."""
