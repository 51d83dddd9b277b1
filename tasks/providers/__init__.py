"""Where messages go: the local outbox (default), Postmark and Twilio, behind one small interface
(``common.Provider``): each sends, reconciles what a dead run left in doubt, and names the feeds
it reports back on (``feedback_feeds``: bounces, suppressions, replies; the outbox has none).
``common`` also holds what a rendered message is (templates build it, providers send it).

May import: ``tasks.messages.ledger``, ``tasks.feedback`` (the recorder), ``tasks.engagement``
(Postmark's opens and clicks), ``tasks.feedback_delivery`` (Twilio's delivery statuses),
``tasks.warehouse``, ``tasks.paths``. Never ``blocks``: ``blocks/resolve.py`` builds providers and flows pass them in."""
