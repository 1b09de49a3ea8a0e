"""The course in a real browser: every notebook opens from its jupytext .py as a notebook in
JupyterLab, runs top to bottom without an error, saves without changing anything but its outputs,
the explorers show as live widgets (their static pictures are for renderers without widgets),
and the noise explorer answers its controls.

    make test                                  # runs these when /usr/bin/chromium is installed
    .venv/bin/python -m pytest -m browser      # only these
    MDIFF_SCREENSHOT_DIR=docs/img .venv/bin/python -m pytest -m browser   # keep the screenshots
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser  # the notebooks to run come from conftest.py (`notebook`)

EXPLORER = "04_noise_explorer"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
RUN_TIMEOUT_MS = 480_000  # one notebook in smoke mode, on one core

# The open document for a path, whichever kind of widget shows it.
_FIND = """(name) => {
    const app = window.jupyterapp;
    if (!app) return null;
    for (const w of app.shell.widgets('main')) if (w.context && w.context.path === name) return w;
    return null;
}"""

_RUN_ALL = f"""async (name) => {{
    const app = window.jupyterapp, panel = ({_FIND})(name);
    await panel.context.ready;
    await panel.sessionContext.ready;
    app.shell.activateById(panel.id);
    // The paired .ipynb brings its committed outputs: clear them, so every count seen below is new.
    await app.commands.execute('notebook:clear-all-cell-outputs');
    window.__mdiffRun = undefined;
    app.commands.execute('notebook:run-all-cells').then(
        ok => {{ window.__mdiffRun = {{ok}}; }},
        error => {{ window.__mdiffRun = {{ok: false, error: String(error)}}; }});
}}"""

_CELLS = f"""(name) => ({_FIND})(name).content.widgets
    .filter(cell => cell.model.type === 'code')
    .map(cell => ({{count: cell.model.executionCount, outputs: cell.model.outputs.toJSON(),
                    source: cell.model.sharedModel.getSource().slice(0, 120)}}))"""


def open_notebook(page, lab, name: str) -> None:
    """Open ``name`` from its URL in a fresh workspace; fail unless it shows as a notebook."""
    page.goto(f"{lab.url}/lab/workspaces/{uuid.uuid4().hex}/tree/{name}?token={lab.token}")
    page.wait_for_function(f"(name) => document.querySelector('.jp-Dialog') || ({_FIND})(name)",
                           arg=name, timeout=120_000)
    dialog = page.locator(".jp-Dialog")
    assert dialog.count() == 0, f"a dialog opened with {name}: {dialog.first.inner_text()}"
    kind = page.evaluate(f"(name) => ({_FIND})(name).node.className", name)
    assert "jp-NotebookPanel" in kind, f"{name} opened as {kind!r}, not as a notebook (defaultViewers)"
    page.locator(".jp-NotebookPanel .jp-Notebook").first.wait_for(state="visible")


def run_all(page, name: str) -> list[dict]:
    """Run every cell; return the code cells' execution counts and outputs once the kernel is idle."""
    page.evaluate(_RUN_ALL, name)
    page.wait_for_function("() => window.__mdiffRun !== undefined", timeout=RUN_TIMEOUT_MS, polling=500)
    page.wait_for_function(f"(name) => ({_FIND})(name).sessionContext.session?.kernel?.status === 'idle'",
                           arg=name, timeout=60_000)
    return page.evaluate(_CELLS, name)


def save(page, name: str) -> None:
    """What Ctrl-S does: the frontend writes its model through the server (both paired files)."""
    page.evaluate(f"async (name) => {{ await ({_FIND})(name).context.save(); }}", name)


def without_outputs(ipynb: Path) -> dict:
    """An .ipynb with what running it changes removed: outputs, execution counts, widget state."""
    notebook = json.loads(ipynb.read_text())
    notebook["metadata"].pop("widgets", None)
    for cell in notebook["cells"]:
        cell.pop("outputs", None)
        cell.pop("execution_count", None)
    return notebook


def errors_in(cells: list[dict]) -> list[str]:
    """Error outputs and printed tracebacks (warnings on stderr are fine)."""
    found = []
    for cell in cells:
        for output in cell["outputs"]:
            if output["output_type"] == "error":
                found.append(f"{output['ename']}: {output['evalue']} in cell {cell['source']!r}")
            elif output["output_type"] == "stream" and "Traceback" in "".join(output.get("text", "")):
                found.append(f"a traceback printed by cell {cell['source']!r}")
    return found


def test_notebook_opens_and_runs_in_the_lab(notebook: Path, lab, page, screenshots):
    open_notebook(page, lab, notebook.name)
    cells = run_all(page, notebook.name)
    errors = errors_in(cells)
    assert not errors, f"{notebook.name}: " + "; ".join(errors)
    assert page.evaluate("() => window.__mdiffRun.ok") is True, f"{notebook.name}: run all cells did not succeed"
    unrun = [c["source"] for c in cells if not isinstance(c["count"], int)]
    assert cells and not unrun, f"{notebook.name}: cells without an execution count: {unrun}"
    page.screenshot(path=screenshots / f"{notebook.stem}.png")
    # A student's `git status` after open, run and save shows the outputs and nothing else.
    save(page, notebook.name)
    assert (lab.root / notebook.name).read_bytes() == notebook.read_bytes(), f"saving rewrote {notebook.name}"
    ipynb = notebook.with_suffix(".ipynb")
    # As text, not as parsed values: 8.0 == 8, but a save that writes 8 for 8.0 changes the file.
    assert json.dumps(without_outputs(lab.root / ipynb.name)) == json.dumps(without_outputs(ipynb)), \
        f"saving changed more than the outputs of {ipynb.name}"
    if notebook.stem == EXPLORER:
        check_explorer(page, screenshots)
        check_static_views(page, cells)


def test_contents_api_round_trip_rewrites_no_byte(notebook: Path, lab):
    """A GET and a PUT of the notebook through the running server, as opening and saving do."""
    files = [lab.root / notebook.name, lab.root / notebook.with_suffix(".ipynb").name]
    before = [f.read_bytes() for f in files]
    model = lab.api(f"contents/{notebook.name}?content=1&type=notebook")
    lab.api(f"contents/{notebook.name}", method="PUT",
            body={"type": "notebook", "format": "json", "content": model["content"]})
    changed = [f.name for f, b in zip(files, before) if f.read_bytes() != b]
    assert not changed, f"a save through the server rewrote {changed}"


def _labelled(page, widget_class: str, label: str):
    """The ipywidgets control of ``widget_class`` whose description is ``label``."""
    exact = page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
    return page.locator(f".{widget_class}").filter(has=exact)


def _image_sources(images) -> list[str]:
    return [images.nth(i).get_attribute("src") or "" for i in range(images.count())]


def _settled(page, images, what: str, differs_from: list[str] | None = None, timeout_s: float = 60) -> list[str]:
    """The explorer's image sources once the kernel is idle and they have not changed for a second
    (each key press may redraw; a redraw clears the output first, so an empty or partial output is
    no answer), and, with ``differs_from``, once they differ from those."""
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while True:
        now = _image_sources(images)
        if now != last:
            last, since = now, time.monotonic()
        idle = page.evaluate("() => [...window.jupyterapp.shell.widgets('main')].every("
                             "w => !w.sessionContext || w.sessionContext.session?.kernel?.status === 'idle')")
        if idle and now and all(now) and time.monotonic() - since > 1 and (
                differs_from is None or (len(now) == len(differs_from) and now != differs_from)):
            return now
        if time.monotonic() > deadline:
            pytest.fail(f"the explorer's image did not settle{'' if differs_from is None else ' on a change'} "
                        f"after {what}")
        time.sleep(0.2)


def check_explorer(page, screenshots: Path) -> None:
    """The slider ``t`` and the dropdown ``schedule`` redraw the explorer's image."""
    slider = _labelled(page, "widget-slider", "t")
    assert slider.count() == 1, f"one IntSlider with description 't' expected, found {slider.count()}"
    cell = page.locator(".jp-Cell").filter(has=slider)
    # The explorer draws into an Output widget (matplotlib) or an Image widget.
    images = cell.locator(".widget-output img, img.widget-image")
    view = cell.locator(".jp-Cell-outputWrapper")
    images.first.wait_for(state="visible")
    # Cells off screen are laid out lazily (content-visibility): scroll first, let the layout settle.
    view.scroll_into_view_if_needed()
    before = _settled(page, images, "running the notebook")
    view.screenshot(path=screenshots / f"{EXPLORER}_start.png")

    readout = slider.locator(".widget-readout").inner_text()
    handle = slider.locator(".noUi-handle")
    handle.focus()
    for key in ["ArrowRight"] * 3 + ["PageUp"] * 2:
        handle.press(key)
    after = _settled(page, images, "moving the slider t", differs_from=before)
    assert slider.locator(".widget-readout").inner_text() != readout, "the slider t did not move"
    view.screenshot(path=screenshots / f"{EXPLORER}_t.png")

    dropdown = _labelled(page, "widget-dropdown", "schedule")
    assert dropdown.count() == 1, f"one Dropdown with description 'schedule' expected, found {dropdown.count()}"
    select = dropdown.locator("select")
    options = select.locator("option").all_text_contents()
    current = select.locator("option:checked").text_content()
    assert len(options) > 1, f"the schedule dropdown offers only {options}"
    select.select_option(label=next(o for o in options if o != current))
    _settled(page, images, "choosing another schedule", differs_from=after)
    view.screenshot(path=screenshots / f"{EXPLORER}_schedule.png")

    tracebacks = cell.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]',
                              has_text="Traceback")
    assert tracebacks.count() == 0, f"the explorer raised: {tracebacks.first.inner_text()[-2000:]}"


def check_static_views(page, cells: list[dict]) -> None:
    """Both explorers send their picture as image/png beside the widget view (for GitHub and
    nbviewer), and the lab renders the widget view, not that picture: the cell's one output (not
    counting those of the Output widget inside the explorer) holds the controls, and is no image
    (JupyterLab's image renderer marks its node with data-mime-type; the widget renderer does not)."""
    bundles = [o["data"] for c in cells for o in c["outputs"] if WIDGET_VIEW in o.get("data", {})]
    assert len(bundles) == 2, f"two explorers displayed expected, found {len(bundles)}"
    assert all("image/png" in b for b in bundles), "an explorer's output has no image/png static view"
    for label in ("t", "step t"):
        slider = _labelled(page, "widget-slider", label)
        assert slider.count() == 1, f"one slider with description {label!r} expected, found {slider.count()}"
        cell = page.locator(".jp-Cell").filter(has=slider)
        shown = cell.locator(".jp-Cell-outputArea > .jp-OutputArea-child > .jp-OutputArea-output")
        kinds = [shown.nth(i).get_attribute("data-mime-type") for i in range(shown.count())]
        assert len(kinds) == 1 and shown.filter(has=slider).count() == 1 and "image/png" not in kinds, \
            f"the explorer with slider {label!r} shows {len(kinds)} outputs ({kinds}), not just the live widget"
