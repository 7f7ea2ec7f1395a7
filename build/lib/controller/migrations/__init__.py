"""Alembic migrations of the mirror table; applied by `wa-controller db upgrade`."""
