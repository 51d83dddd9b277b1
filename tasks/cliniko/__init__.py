"""Reading Cliniko: the HTTP client (``client``), the table of resources (``resources``) and the
incremental sync that writes ``raw.*`` with its watermarks (``sync``).

May import: ``tasks.errors``, ``tasks.warehouse``. Nothing here knows about messages."""
