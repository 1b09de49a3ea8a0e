"""The README is the front door: its results tables are the benchmarks' own output, its notebook
table lists every notebook with the time and memory its committed run recorded, and what it links
to exists."""

import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def between(name):
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", README, re.S)
    assert match, f"README lacks the {name} block"
    return match.group(1)


def test_likelihood_table_is_the_benchmarks_output():
    assert between("likelihood") == (ROOT / "benchmarks/results/likelihood_cpu.md").read_text().strip()


def assert_block_is_the_markdown_of(block, script, result):
    """The README's ``block`` is ``benchmarks/results/<result>.md``, which is ``script``'s markdown() of
    the JSON beside it."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(script, ROOT / "benchmarks" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = (ROOT / f"benchmarks/results/{result}.md").read_text()
    assert table == module.markdown(json.loads((ROOT / f"benchmarks/results/{result}.json").read_text()))
    assert between(block) == table.strip()


def test_likelihood_curve_table_is_the_benchmarks_output():
    assert_block_is_the_markdown_of("likelihood-curve", "likelihood", "likelihood_cpu_curve")


def test_oracle_table_is_the_benchmarks_output():
    assert between("oracle") == (ROOT / "benchmarks/results/oracle_cpu.md").read_text().strip()


def test_designs_table_is_the_benchmarks_output():
    assert between("designs") == (ROOT / "benchmarks/results/quality_cpu_designs.md").read_text().strip()


def test_samples_table_is_the_benchmarks_output():
    assert between("samples") == (ROOT / "benchmarks/results/samples_cpu.md").read_text().strip()


def test_text_table_is_the_benchmarks_output():
    assert_block_is_the_markdown_of("text", "text", "text_cpu")


def test_notebook_table_matches_the_committed_runs():
    rows = between("notebooks").splitlines()
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert len(rows) == len(notebooks) == 7
    for row, path in zip(rows, notebooks):
        info = nbformat.read(path, as_version=4).metadata["mdiff_lite"]
        assert f"`{path.stem}`" in row
        assert f"{info['seconds']:.0f} s, {info['peak_memory_bytes'] / 2**20:.0f} MiB" in row
        assert info["seconds"] <= 600 and info["peak_memory_bytes"] <= 1.5 * 2**30, "full mode: 10 min, 1.5 GB"


def test_links_and_pictures_exist():
    for target in re.findall(r"\]\(((?!https?://)[^)#]+)\)", README):
        assert (ROOT / target).exists(), f"README links to a missing {target}"
    assert "mybinder.org/badge_logo.svg" in README and "urlpath=lab/tree/notebooks/" in README
