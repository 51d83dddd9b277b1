"""A Cliniko API simulator: a generated clinic (``SandboxClinic``) served over real HTTP on
127.0.0.1 (``SandboxServer``) with Cliniko's auth, paging, filters, hidden rows, rate limit and
injectable faults. See ``clinic`` for the data and its clock, ``app`` for the HTTP behaviour.
"""

from sandbox.cliniko.clinic import SandboxClinic
from sandbox.cliniko.controls import Faults, RateLimit, Stats
from sandbox.cliniko.server import SandboxServer

__all__ = ["Faults", "RateLimit", "SandboxClinic", "SandboxServer", "Stats"]
