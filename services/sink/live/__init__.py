"""The sink's live side: guarded read-only SQL, the HTTP API and dashboard, Parquet snapshots."""
