"""Unsubscribe links: signing and checking the token in every marketing message (``tokens``,
with the key every machine shares), the small web page that takes a click (``app``) and the
Prefect events that carry a click to its clinic's home (``events``).

May import: ``tasks.config``, ``tasks.errors``, ``tasks.feedback``, ``tasks.warehouse``,
``tasks.paths``, ``tasks.home`` (whether links are checked on other machines), and for the
Twilio status callbacks the page also takes, ``tasks.providers.twilio`` and
``tasks.feedback_delivery``; ``sandbox.server`` (``app.serving``: the page on a thread for
``relay serve``, with the sandboxes' ``ThreadedServer``)."""
