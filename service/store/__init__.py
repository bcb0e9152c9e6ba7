"""The SQL store: tables, migrations and the queries the service makes (SQLAlchemy 2, Alembic)."""
