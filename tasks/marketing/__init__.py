"""Marketing sequences: journeys (``journeys``: go-live and the tick; ``enrolment``: entry and exit;
``steps``: send, wait, condition) and campaigns (``campaigns``: one-off sends to a segment,
confirmed by a person), each with its re-check before sending (``recheck``: what they share).

May import: ``tasks.config``, ``tasks.errors``, ``tasks.messages``, ``tasks.models``,
``tasks.warehouse``."""
