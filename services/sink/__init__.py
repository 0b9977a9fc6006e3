"""The sink: the one writer of the DuckDB results file, and its live side.

- :mod:`services.sink.service`: the Kafka consumer that stores every record (``build_app``).
- :mod:`services.sink.store`: the results database (tables, upserts, kept metric cells, status).
- :mod:`services.sink.live`: the HTTP API and dashboard, the guarded read-only SQL, snapshots.

Nothing is imported here: the CLI's reader (perg/cli/client.py) uses the store and the live
query engine on a results file without loading the Kafka service.
"""
