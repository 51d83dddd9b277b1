"""Messages from planned to sent: the ledger and its state machine (``ledger``), each channel's
marketing list (``channels``), rendering (``templates``), the marketing gate (``gate``: frequency
cap, quiet hours), the re-check's answer and the one router by source kind (``prepare``),
sending (``dispatch``) and the shape of an address on each channel (``addresses``: E.164, email).

May import: ``tasks.config``, ``tasks.errors``, ``tasks.paths``, ``tasks.warehouse``,
``tasks.providers``, ``tasks.unsubscribe``. Planners (triggers, journeys, campaigns) import from
here, never the other way round: each contributes its re-check to ``prepare.by_source_kind``."""
