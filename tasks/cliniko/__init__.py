"""Reading Cliniko: the HTTP client (``client``; its errors in ``errors``), the table of
resources (``resources``), the incremental sync with its one pager and one cursor (``sync``:
``run_sync`` is the one run path) and the writer of ``raw.*`` rows, quarantine and watermarks
(``writer``).

May import: ``tasks.errors``, ``tasks.warehouse``, ``tasks.peak_memory`` (the sync's report) and
``tasks.models.functions`` (the writer reads new mobile numbers with the models' phone memo,
imported where it is used). Nothing here knows about messages."""
