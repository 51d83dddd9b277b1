"""Messages from planned to sent: the ledger and its state machine (``ledger``), rendering
(``templates``), the marketing gate (``gate``: frequency cap, quiet hours) and sending
(``dispatch``).

May import: ``tasks.config``, ``tasks.warehouse``, ``tasks.providers``, ``tasks.unsubscribe``.
Planners (triggers, journeys, campaigns) import from here, never the other way round."""
