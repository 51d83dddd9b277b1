"""Building the SQL models of ``sql/``: the runner (``runner``: order, all-or-nothing per model,
data tests, build records) and the Python functions the SQL calls (``functions``: phone and
email checks, the phone memo).

May import: ``tasks.errors``, ``tasks.paths``, ``tasks.config``, ``tasks.cliniko.resources``.
Never imports ``sql/`` as Python: the models are read as text."""
