"""The work: plain, testable functions (some wrapped as Prefect tasks). No Prefect server needed to
call them; flows in ``flows/`` wire them together."""
