"""The decision log: its schema, the SQLite store, the Parquet export and simulated logs."""
