"""Where messages go: the local outbox (default), Postmark and Twilio, behind one small interface."""
