"""Size of ``perg report RUN --against RUN --html`` for two 7,208-row x 15-condition runs.

.venv/bin/python benchmarks/report_size.py [--rows 7208]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fixtures.live.runs import fails, make_spec, verdicts

from perg.cli import main as perg
from perg.protocol import METHODS, SETTINGS
from services.sink.store import ResultStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=7208)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "perg.duckdb"
        store = ResultStore(db)
        for run_id, broken in (("reference", 5), ("candidate", 12)):
            spec = make_spec(run_id, args.rows, settings=SETTINGS, methods=METHODS)
            store.save_run(spec)
            for first in range(0, args.rows, 2000):
                rows = range(first, min(first + 2000, args.rows))
                store.save_verdicts(verdicts(spec, rows, pref_wrong=fails(run_id, broken)))
        store.close()
        os.environ.update(PERG_DB=str(db), PERG_SINK_URL="http://127.0.0.1:9")
        out = Path(tmp) / "report.html"
        perg(["report", "candidate", "--against", "reference", "--html", str(out)])
        size = out.stat().st_size
        print(f"report of {args.rows} rows x {len(SETTINGS) * len(METHODS)} conditions against "
              f"a reference: {size} bytes ({size / 1024:.0f} KiB)")  # fmt: skip


if __name__ == "__main__":
    main()
