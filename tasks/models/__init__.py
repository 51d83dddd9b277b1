"""Building the SQL models of ``sql/``: reading the project (``project``: models, data tests and
the order their SQL implies), bringing tables to their models' rows (``tables``), checking what
the rest relies on of them (``shape``: key columns, a segment's one row per patient), who joined
and left each list and segment (``membership``), the Python functions the SQL calls
(``functions``: phone and email checks, the phone memo; ``phones``: reading a number, and the
phone helper process) and the runner that ties one build together (``runner``: one
transaction, data tests, build records; the one run path for CLI and flow).

May import: ``tasks.errors``, ``tasks.paths``, ``tasks.config``, ``tasks.warehouse``,
``tasks.cliniko.resources`` and ``tasks.cliniko.fields`` (the columns the sync parses),
``tasks.messages.channels``, ``tasks.messages.addresses`` (the email shape dispatch sends to:
the list asks it too), ``tasks.triggers.definition`` (the names a filter refers to). Never
imports ``sql/`` as Python: the models are read as text."""
