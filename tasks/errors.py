"""Errors worded for the person who must act. The CLI prints them without a traceback.

Messages never carry patient data: say which clinic, resource, record id, file or setting.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """Base for problems a clinic owner, analyst or operator fixes (not bugs)."""
