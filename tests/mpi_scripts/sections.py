"""Run the sections of a scenario job in turn on every rank (each in ``out_dir/<section>/``), announcing each one."""

from collections.abc import Callable
from pathlib import Path

from sb3_parallel_dqn.distributed import comm


def run_sections(out_dir: Path, sections: dict[str, Callable[[Path], object]]) -> None:
    for name, section in sections.items():
        folder = out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        comm.comm().Barrier()  # type: ignore[union-attr]
        section(folder)
        print(f"rank {comm.rank()} SECTION {name} DONE", flush=True)
