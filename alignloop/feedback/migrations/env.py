"""Alembic environment: runs migrations on a connection handed over by
`alignloop.feedback.store.migrate`, or on the database named by `-x db=PATH_OR_URL` when the
alembic command is used directly."""

from alembic import context

from alignloop.feedback import chat_db  # noqa: F401  its tables are on Base too (revision 6)
from alignloop.feedback.db import Base, make_engine, writer

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    db = context.get_x_argument(as_dictionary=True).get("db", "feedback.db")
    engine = make_engine(db)
    with writer(engine).connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
