"""Unsubscribe links: signing and checking the token in every marketing message (``tokens``)
and the small web page that records a click (``app``).

May import: ``tasks.config``, ``tasks.feedback``, ``tasks.warehouse``, ``tasks.paths``."""
