"""Unsubscribe links: signing and checking the token in every marketing message (``tokens``,
with the key every machine shares), the small web page that takes a click (``app``) and the
Prefect events that carry a click to its clinic's home (``events``).

May import: ``tasks.config``, ``tasks.feedback``, ``tasks.warehouse``, ``tasks.paths``."""
