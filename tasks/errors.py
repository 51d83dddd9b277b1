"""Errors worded for the person who must act. The CLI prints them without a traceback.

Messages never carry patient data: say which clinic, resource, record id, file or setting.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """Base for problems a clinic owner, analyst or operator fixes (not bugs)."""


# ``extra`` of a log line whose words the error ending the run says again (each feed that could
# not be read, then the feedback step's error naming them all): the run's log in the UI keeps
# it; a terminal that prints the error (relay/cli/flowrun.py) does not show it twice.
SAID_IN_THE_ERROR = {"relay_said_in_the_error": True}
