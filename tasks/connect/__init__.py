"""Connecting a real clinic (``relay connect``): read-only checks of its Cliniko key, Postmark
server and Twilio account, each failure explained in plain words (``cliniko``, ``postmark``,
``twilio``), and the first ``clinic.yaml`` written from what Cliniko says (``clinic_file``).

Nothing here saves credentials: the CLI turns what passed into Prefect blocks. Secrets are never
part of a message, a result or a file written here. Imports ``tasks`` only.
"""

from __future__ import annotations

from tasks.errors import UserFacingError


class ConnectFailed(UserFacingError):
    """A check failed: ``service`` (Cliniko, Postmark, Twilio), ``problem`` (a short tag the tests
    and the summary use: bad_key, wrong_shard, ...) and the explanation with what to do."""

    def __init__(self, service: str, problem: str, message: str) -> None:
        super().__init__(f"{service}: {message}")
        self.service = service
        self.problem = problem
