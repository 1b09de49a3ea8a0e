"""The notebooks: paired sources and outputs agree, committed outputs are current and error-free,
and every notebook runs top to bottom in smoke mode in a fresh kernel."""

import json
from pathlib import Path

import nbformat
import pytest

from mdiff_lite._nbrun import execute, read_source, source_hash

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ["01_forward_process", "02_posterior", "03_elbo", "04_noise_explorer", "05_train_denoiser",
            "06_likelihood_vs_dequantization"]
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def test_the_six_notebooks_are_there():
    assert [p.stem for p in SOURCES] == EXPECTED


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_source_header_and_parameters_cell(path):
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:\n"), "jupytext header first"
    header = text.split("# ---\n")[1]
    assert "kernelspec:" in header and "name: python3" in header, "a python3 kernelspec, so the kernel starts"
    notebook = read_source(path)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "MDIFF_SMOKE" in tagged[0].source, "one parameters cell reading MDIFF_SMOKE"
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and "minutes" in first.source.lower(), \
        "open with what the reader learns and how long it takes"
    assert any(c.cell_type == "markdown" and "exercise" in c.source.lower() for c in notebook.cells[-6:]), \
        "close with exercises"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_committed_ipynb_is_paired_current_and_error_free(path):
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `make notebooks`"
    executed = nbformat.read(ipynb, as_version=4)
    source = read_source(path)
    assert [(c.cell_type, c.source.strip()) for c in executed.cells] == \
        [(c.cell_type, c.source.strip()) for c in source.cells], "the .py and the .ipynb differ in cell sources"
    info = executed.metadata.get("mdiff_lite", {})
    assert info.get("source_sha256") == source_hash(source), \
        f"{ipynb.name} holds outputs of an older source: run `make notebooks`"
    assert info.get("smoke") is False, "committed outputs come from full mode"
    for cell in executed.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"error output in {ipynb.name}: {output.get('ename')}"
            assert "Traceback" not in json.dumps(output.get("text", "")), f"a traceback printed in {ipynb.name}"
    code = [c for c in executed.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code), "every code cell was executed"


@pytest.mark.slow
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_runs_in_smoke_mode(path, tmp_path):
    result = execute(path, smoke=True, out=tmp_path, timeout=600)
    executed = nbformat.read(result["notebook"], as_version=4)
    assert executed.metadata["mdiff_lite"]["smoke"] is True
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.output_type == "error"]
