"""Engines for the state database, and the migrations that create and upgrade it."""
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _configure(dbapi, _record):
            # SQLAlchemy emits BEGIN itself; pysqlite's legacy transactions would let claims race.
            dbapi.isolation_level = None
            # WAL with synchronous=NORMAL: a commit survives a crash of the process (kill -9);
            # only a crash of the whole machine can lose the last transactions.
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000", "foreign_keys=ON"):
                dbapi.execute(f"PRAGMA {pragma}")

        @event.listens_for(engine, "begin")
        def _begin(conn):
            # A writer takes the write lock when it begins, so that a claim's read and update
            # cannot race another writer's. A reader (execution option read_only, see reading())
            # needs no lock in WAL mode: it reads a snapshot and holds up no writer meanwhile.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("read_only") else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def reading(engine: Engine) -> Connection:
    """A connection for reads only (long listings): on SQLite it takes no write lock."""
    return engine.connect().execution_options(read_only=True)


def upgrade(engine: Engine) -> None:
    """Create the schema, or bring an existing database up to the newest revision."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
