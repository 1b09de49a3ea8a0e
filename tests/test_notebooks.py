"""The notebooks: paired sources and outputs agree, committed outputs are current and error-free,
opening and saving one in JupyterLab rewrites no byte of either file, and every notebook runs top
to bottom in smoke mode in a fresh kernel."""

import asyncio
import concurrent.futures
import json
import os
import shutil
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupyter_client.kernelspec import get_kernel_spec

from mdiff_lite._nbrun import KERNEL, execute, read_source, source_hash

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ["01_forward_process", "02_posterior", "03_elbo", "04_noise_explorer", "05_train_denoiser",
            "06_likelihood_vs_dequantization", "07_text_uniform_vs_absorbing"]
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def test_the_seven_notebooks_are_there():
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


def _save_through_jupytext(folder: Path, name: str) -> None:
    """What JupyterLab's open and save do to ``folder/name`` on the server's side: a GET and a PUT
    through the contents manager the jupytext server extension installs, with the folder's
    jupytext.toml (the frontend's own changes to the kernelspec and cell metadata are checked
    by the tests that use this, against the installed kernel and JupyterLab's defaults)."""
    manager = jupytext.AsyncTextFileContentsManager(root_dir=str(folder))

    async def open_and_save():
        model = await manager.get(name, content=True, type="notebook")
        await manager.save({"type": "notebook", "format": "json", "content": model["content"]}, name)

    # In a thread of its own: the browser tests' playwright (sync API) keeps an event loop running
    # in the main thread for the whole session, and asyncio.run refuses to start inside one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, open_and_save()).result()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_saving_the_source_rewrites_no_byte(path, tmp_path):
    """The header is what jupytext writes with the repository's jupytext.toml (a save would
    otherwise add or change it, and `git status` would show every opened notebook)."""
    shutil.copy(NOTEBOOKS / "jupytext.toml", tmp_path)
    shutil.copy(path, tmp_path)  # alone: the header, not the committed .ipynb, decides
    _save_through_jupytext(tmp_path, path.name)
    saved = (tmp_path / path.name).read_text()
    assert saved == path.read_text(), f"a save rewrites {path.name}'s header as:\n" + saved.split("\n# ---\n")[0]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_saving_the_pair_rewrites_no_byte(path, tmp_path):
    """Opening and saving the pair leaves both files as committed, also when the .ipynb is the newer
    file (after `make notebooks` or a pull of new outputs): jupytext then refuses to open the
    notebook unless the .ipynb's metadata and cells give the .py's text back."""
    for file in (NOTEBOOKS / "jupytext.toml", path, path.with_suffix(".ipynb")):
        shutil.copy(file, tmp_path)
    now = time.time()
    os.utime(tmp_path / path.name, (now - 60, now - 60))
    _save_through_jupytext(tmp_path, path.name)
    for name in (path.name, path.with_suffix(".ipynb").name):
        assert (tmp_path / name).read_bytes() == (NOTEBOOKS / name).read_bytes(), f"a save rewrites {name}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_kernelspec_is_the_installed_kernels(path):
    """JupyterLab writes the running kernel's spec into both files when it saves: the header and
    the .ipynb must already hold it (`jupyter kernelspec list` shows the installed one)."""
    spec = get_kernel_spec(KERNEL)
    expected = {"display_name": spec.display_name, "language": spec.language, "name": KERNEL}
    assert read_source(path).metadata["kernelspec"] == expected, f"{path.name}'s header"
    assert nbformat.read(path.with_suffix(".ipynb"), as_version=4).metadata["kernelspec"] == expected


def _integral_floats(node, where="metadata") -> list[str]:
    """Where ``node`` holds a float like 8.0, which JupyterLab (JavaScript's JSON) writes as 8."""
    if isinstance(node, float) and node.is_integer():
        return [where]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return [w for key, value in items for w in _integral_floats(value, f"{where}.{key}")]


def _rewritten_by_a_save(notebook) -> list[str]:
    """What a JupyterLab save would change in ``notebook`` besides outputs and widget state: cell
    timings (JupyterLab records none by default and deletes them from each cell it runs) and
    floats with integer values."""
    metadata = {k: v for k, v in notebook.metadata.items() if k != "widgets"}
    found = _integral_floats(metadata)
    for i, cell in enumerate(notebook.cells):
        if "execution" in cell.metadata:
            found.append(f"cells[{i}].metadata.execution")
        found += _integral_floats(cell.metadata, f"cells[{i}].metadata")
    return found


def test_jupyterlab_records_no_cell_timings():
    """The fact _rewritten_by_a_save relies on, from the installed JupyterLab and our settings."""
    schema = Path(sys.prefix, "share", "jupyter", "lab", "schemas", "@jupyterlab", "notebook-extension",
                  "tracker.json")
    assert json.loads(schema.read_text())["properties"]["recordTiming"]["default"] is False
    overrides = json.loads((NOTEBOOKS.parent / "binder" / "overrides.json").read_text())
    assert "recordTiming" not in overrides.get("@jupyterlab/notebook-extension:tracker", {})


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_committed_ipynb_metadata_survives_a_save(path):
    changed = _rewritten_by_a_save(nbformat.read(path.with_suffix(".ipynb"), as_version=4))
    assert not changed, f"a save in JupyterLab would rewrite {changed}"


def test_runner_writes_what_a_save_writes(tmp_path):
    """`make notebooks` writes an .ipynb that a save in JupyterLab leaves as it is."""
    header = SOURCES[0].read_text().split("\n# ---\n")[0] + "\n# ---\n"
    source = tmp_path / "tiny.py"
    source.write_text(header + "\n# %% [markdown]\n# A note.\n\n# %%\nprint(6 * 7)\n")
    shutil.copy(NOTEBOOKS / "jupytext.toml", tmp_path)
    execute(source, timeout=60)
    ipynb = source.with_suffix(".ipynb")
    written = {p: p.read_bytes() for p in (source, ipynb)}
    executed = nbformat.read(ipynb, as_version=4)
    assert executed.cells[1].outputs[0].text == "42\n"
    assert not _rewritten_by_a_save(executed)
    spec = get_kernel_spec(KERNEL)
    assert executed.metadata["kernelspec"] == {"display_name": spec.display_name, "language": spec.language,
                                               "name": KERNEL}
    now = time.time()
    os.utime(source, (now - 60, now - 60))  # the .ipynb is the newer file, as after a run
    _save_through_jupytext(tmp_path, source.name)
    for p, before in written.items():
        assert p.read_bytes() == before, f"a save rewrites {p.name}"


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
