"""clinic-relay: Cliniko -> DuckDB -> SQL lists and segments -> reminders and campaigns, on Prefect.

Importing this package applies the offline Prefect defaults (see ``relay.env``) before Prefect is
imported anywhere, so no command reaches for the internet.
"""

from relay import env as _env

_env.apply_defaults()
