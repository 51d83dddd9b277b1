"""Triggers: the definition a clinic writes in ``clinic.yaml`` (``definition``) and the planner
that turns it into ledger rows (``plan``).

May import: ``tasks.config``, ``tasks.messages``, ``tasks.models``, ``tasks.warehouse``."""
