"""The work: plain, testable functions (some wrapped as Prefect tasks). No Prefect server needed to
call them; flows in ``flows/`` wire them together.

May import: ``sandbox.server`` (the unsubscribe page runs on its thread server for ``relay
serve``). Never ``flows``, ``relay`` or ``blocks``: a provider or account object is passed in."""
