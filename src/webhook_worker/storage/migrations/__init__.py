"""Alembic migrations, run by ``webhook-worker migrate`` (see ``storage/migrate.py``)."""
