"""The live SQL time limit holds even when DuckDB misses an interrupt."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest

from services.sink.live.query import _time_limit

ENDLESS = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"


class FirstInterruptLost:
    """A DuckDB connection whose first interrupt lands nowhere, as one that arrives before
    the query executes can."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.interrupts = 0

    def interrupt(self) -> None:
        self.interrupts += 1
        if self.interrupts > 1:
            self.con.interrupt()


def test_an_endless_query_is_stopped_although_the_first_interrupt_is_lost() -> None:
    con = duckdb.connect()
    flaky = FirstInterruptLost(con)
    started = time.monotonic()
    with pytest.raises(duckdb.InterruptException), _time_limit(flaky, 0.05):  # type: ignore[arg-type]
        con.execute(ENDLESS).fetchall()
    assert flaky.interrupts >= 2
    assert time.monotonic() - started < 10


def test_no_interrupt_after_the_block() -> None:
    con = duckdb.connect()
    flaky = FirstInterruptLost(con)
    with _time_limit(flaky, 0.05):  # type: ignore[arg-type]
        assert con.execute("SELECT 42").fetchone() == (42,)
    assert flaky.interrupts == 0
    assert not any(t.name == "sql-time-limit" for t in threading.enumerate())
