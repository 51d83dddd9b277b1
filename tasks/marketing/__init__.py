"""Marketing sequences: journeys (enrolment, steps, waits) and campaigns (one-off sends to a
segment, confirmed by a person).

May import: ``tasks.config``, ``tasks.messages``, ``tasks.models``, ``tasks.warehouse``."""
