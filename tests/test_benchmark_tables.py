"""The benchmark tables of the docs and the README are what docs/benchmarks/build_tables.py makes of the result
files: regenerated here into a temporary folder, they must equal the committed ones, so that no table drifts from
its results (after a new benchmark run: ``python docs/benchmarks/build_tables.py`` and commit the output)."""

import importlib.util

from conftest import REPO_DIR

BENCHMARKS = REPO_DIR / "docs" / "benchmarks"
REGENERATE = "run `python docs/benchmarks/build_tables.py` and commit docs/benchmarks/_generated/ and README.md"


def build_tables():
    spec = importlib.util.spec_from_file_location("build_tables", BENCHMARKS / "build_tables.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tables_are_generated_from_the_result_files(tmp_path):
    assert build_tables().main(["--out", str(tmp_path)]) == 0
    generated = {path.name: path.read_text(encoding="utf-8") for path in tmp_path.iterdir()}
    committed = {path.name: path.read_text(encoding="utf-8") for path in (BENCHMARKS / "_generated").iterdir()}
    assert sorted(committed) == sorted(generated), REGENERATE
    for name, text in generated.items():
        assert committed[name] == text, f"docs/benchmarks/_generated/{name} differs from its result files: {REGENERATE}"


def test_readme_carries_the_generated_table(tmp_path):
    build_tables().main(["--out", str(tmp_path)])
    readme = (REPO_DIR / "README.md").read_text(encoding="utf-8")
    start = "<!-- results table: generated, do not edit (tests/test_benchmark_tables.py) -->\n"
    assert start in readme
    table = readme.split(start, 1)[1].split("<!-- end of results table -->", 1)[0]
    assert table == (tmp_path / "readme_table.md").read_text(encoding="utf-8"), REGENERATE


def test_every_generated_table_is_on_a_page():
    pages = "".join(path.read_text(encoding="utf-8") for path in BENCHMARKS.glob("*.rst"))
    for path in (BENCHMARKS / "_generated").glob("*.rst"):
        assert f".. include:: _generated/{path.name}" in pages, f"{path.name} is generated but no page includes it"
