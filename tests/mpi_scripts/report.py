"""
What a scenario script measured, as values: each rank writes its own ``FOLDER/<name>_rank<r>.json`` (lines printed
by several ranks at once can interleave), and the pytest side reads them all with tests/conftest.py's
``rank_reports`` (or ``reports_present``, for a job that ends on a fault) and asserts on the values.
"""

import json
import os
from pathlib import Path

from sb3_parallel_dqn.distributed import comm


def report(folder: Path | str, name: str, **values: object) -> None:
    """
    Add ``values`` to this rank's report ``FOLDER/<name>_rank<r>.json`` (created at the first call; a later call adds
    or replaces keys). Written to a temporary file, then renamed: a reader, even one that reads right after the job
    was killed, finds the whole previous or the whole new report, never half of one.
    """
    path = Path(folder) / f"{name}_rank{comm.rank()}.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({**known, **values}))
    os.replace(partial, path)
