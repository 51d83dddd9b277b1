"""Deployable Prefect flows: thin wiring, parameters and artifacts. The rules live in ``tasks/``.

May import: ``tasks`` and ``blocks.resolve`` (a clinic's saved blocks or environment, turned
into the providers and account passed to ``tasks``). Nothing here imports ``relay``."""
