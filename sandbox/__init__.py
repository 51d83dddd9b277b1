"""Local stand-ins for Cliniko, Postmark and Twilio: the embedded default, the integration-test peer
and the benchmark target. Served over real HTTP on 127.0.0.1.

May import: ``sandbox`` alone, nothing else of ours (a peer that shared code with the client it
tests would agree with that client's mistakes)."""
