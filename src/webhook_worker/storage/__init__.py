"""Tables, migrations and the queries on them (PostgreSQL and SQLite through one code path)."""
