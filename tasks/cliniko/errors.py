"""The Cliniko errors a person acts on: each says what to check, never the key or a record.

Raised by ``tasks.cliniko.client`` (which re-exports them, their usual import)."""

from __future__ import annotations

from tasks.errors import UserFacingError


class ClinikoError(UserFacingError):
    """Cliniko refused or failed a request in a way retrying will not fix."""


class BadApiKey(ClinikoError):
    """401: the key is wrong, revoked, or sent to another shard's host."""


class PermissionDenied(ClinikoError):
    """403: the key's user may not read this resource (or the request lacked a User-Agent)."""


class ResourceNotFound(ClinikoError):
    """404: a low role cannot see the resource, or the base URL points somewhere else."""


class BadBaseUrl(ClinikoError):
    """The base URL set is not one a request can go to (no scheme, a misspelt one, no host)."""


class BadContact(ClinikoError):
    """The User-Agent contact is missing, not an email address, or a placeholder."""


class ClinikoUnavailable(ClinikoError):
    """Server errors, timeouts or dropped connections outlasted every retry."""


class GarbagePage(ClinikoError):
    """Cliniko kept answering 200 with a body that is not a list page (not JSON, no records, or
    a compressed body that does not decode)."""
