"""The decision log: every decision with its propensity, and the outcomes reported for it.

One-way layers, each importing only those above it:

* :mod:`~cvm_rl.logs.schema` — the tables (SQLite DDL), version, migrations, mode StrEnums;
* :mod:`~cvm_rl.logs.records` — the records written and read, and the log's errors;
* :mod:`~cvm_rl.logs.reader` — the one reader (read-only opening, chunked selects, BLOB
  slicing, the outcome window);
* :mod:`~cvm_rl.logs.store` — :class:`~cvm_rl.logs.store.DecisionLog`, the writer;
* :mod:`~cvm_rl.logs.export` — the Parquet export (the only module that needs pyarrow at
  import);
* :mod:`~cvm_rl.logs.arrays` and :mod:`~cvm_rl.logs.convert` — logged feedback as arrays, and
  the converters from a log or an export to them;
* :mod:`~cvm_rl.logs.simulated` — logs of simulated customers.

Nothing is imported here, so serving imports no more than it uses (no pyarrow).
"""
