"""
Run the sections of a scenario job in turn on every rank (each in ``out_dir/<section>/``). After each one, every rank
adds it to its ``out_dir/sections_rank<r>.json`` (``{"done": [...]}``, report.py): the sections it finished.
"""

from collections.abc import Callable
from pathlib import Path

from report import report

from sb3_parallel_dqn.distributed import comm


def run_sections(out_dir: Path, sections: dict[str, Callable[[Path], object]]) -> None:
    done = []
    for name, section in sections.items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        comm.comm().Barrier()  # type: ignore[union-attr]
        section(folder)
        done.append(name)
        report(out_dir, "sections", done=done)
