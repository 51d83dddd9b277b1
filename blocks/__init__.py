"""Prefect Block types holding connection settings and secrets (never in config files or code):
``ClinikoAccount``, ``PostmarkServer``, ``TwilioAccount``, and ``resolve``, the one place that
turns a clinic's configuration into them (a saved block, or ``env`` for the demo) and into
providers.

May import: ``tasks`` (the client and provider classes, the config). Imported by ``flows`` and
the CLI only; ``tasks`` never imports ``blocks``."""
