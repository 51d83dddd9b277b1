"""Reading Cliniko: the HTTP client (``client``), the table of resources (``resources``), the
incremental sync with its one pager and one cursor (``sync``: ``run_sync`` is the one run path)
and the writer of ``raw.*`` rows, quarantine and watermarks (``writer``).

May import: ``tasks.errors``, ``tasks.warehouse``. Nothing here knows about messages."""
