"""Configuration (SQLite) and analytics (DuckDB) storage."""
