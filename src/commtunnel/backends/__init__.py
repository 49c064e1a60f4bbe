"""Storage and queue implementations (SQLite, embedded default)."""
