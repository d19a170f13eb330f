"""Persistence: SQLAlchemy models, repositories (which never commit), engine set-up, migrations."""
