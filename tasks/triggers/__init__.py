"""Triggers: the definition a clinic writes in ``clinic.yaml`` (``definition``), the candidate SQL
that finds a trigger's messages (``query``), the tick's planning into the ledger (``plan``), the
send-time re-check and template context (``prepare``), and the operator's read-only views:
calendar, printed SQL, typo check, render context (``preview``).

May import: ``tasks.config``, ``tasks.errors``, ``tasks.messages``, ``tasks.models``,
``tasks.settings_model``, ``tasks.warehouse``."""
