"""clinic-relay: Cliniko -> DuckDB -> SQL lists and segments -> reminders and campaigns, on Prefect.

``relay`` is what a person runs: the ``relay`` command (``relay.cli``), the local Prefect server with
the demo ticking on it (``relay.serve``) and the alerts (``relay.alerts``).

May import: ``flows``, ``tasks``, ``blocks`` and ``sandbox``; nothing in them imports it.

Importing this package applies the offline Prefect defaults (see ``relay.env``) before Prefect is
imported anywhere, so no command reaches for the internet.
"""

from relay import env as _env

_env.apply_defaults()
