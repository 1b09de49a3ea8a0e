"""Execute the course's notebooks: the jupytext ``.py`` sources into their paired ``.ipynb``.

    python -m mdiff_lite._nbrun [--smoke] [--out DIR] [--timeout S] notebooks/NN_name.py ...

Each source runs top to bottom in a fresh kernel started in the notebook's folder; smoke mode
sets ``MDIFF_SMOKE=1`` (read by each notebook's ``parameters`` cell) so long computations shrink.
The executed notebook records in its metadata (``mdiff_lite``) the hash of the cell sources it
ran (:func:`source_hash`), the mode, the wall time and the kernel's peak memory, so a test can
tell when committed outputs came from an older source. The ``.ipynb`` is written atomically,
and only when every cell ran without an error (``make notebooks`` runs all of them in full mode).

Its other metadata is what a JupyterLab save of the same run writes, so that opening, running and
saving a notebook changes only its outputs: the kernelspec of the kernel that ran it, no cell
timings (JupyterLab records none by default and deletes them on save), the pairing without
jupytext's ``text_representation`` (which the contents manager drops from ``.ipynb`` files),
and no float with an integer value.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

KERNEL = "python3"  # the kernel every notebook header names

# Appended for the run, removed before saving: the kernel's peak resident memory, in bytes
# (VmHWM on Linux; ru_maxrss elsewhere, which on Linux would also count the parent before exec).
_PEAK_MEMORY_CELL = """\
import re as _re, resource as _r, sys as _s
try:
    print(int(_re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024)
except (OSError, AttributeError):
    print(_r.getrusage(_r.RUSAGE_SELF).ru_maxrss * (1 if _s.platform == "darwin" else 1024))"""


def source_hash(notebook) -> str:
    """SHA-256 of the cells' types and sources: what a notebook's outputs depend on."""
    cells = [[c.cell_type, c.source.strip()] for c in notebook.cells]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def read_source(path):
    """The notebook a jupytext ``.py`` describes (no outputs)."""
    import jupytext

    return jupytext.read(path)


def execute(path, *, smoke: bool = False, out: Path | None = None, timeout: int = 900) -> dict:
    """Run ``path`` (a ``.py``) in a fresh python3 kernel; write the executed ``.ipynb`` beside it
    (or in ``out``); return ``{"notebook", "seconds", "peak_memory_bytes", "smoke"}``."""
    import nbformat
    from jupyter_client.kernelspec import get_kernel_spec
    from jupytext.jupytext import drop_text_representation_metadata
    from nbclient import NotebookClient

    path = Path(path)
    notebook = read_source(path)
    digest = source_hash(notebook)
    notebook.cells.append(nbformat.v4.new_code_cell(_PEAK_MEMORY_CELL))
    previous = os.environ.get("MDIFF_SMOKE")
    os.environ["MDIFF_SMOKE"] = "1" if smoke else "0"  # the kernel inherits this process's environment
    start = time.perf_counter()
    try:
        client = NotebookClient(notebook, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        client.execute()
    finally:
        if previous is None:
            del os.environ["MDIFF_SMOKE"]
        else:
            os.environ["MDIFF_SMOKE"] = previous
    seconds = time.perf_counter() - start
    # nbclient raises on a failing cell, not on an error a hook prints afterwards (matplotlib's draw)
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors:
        raise RuntimeError(f"{path.name}: error output {errors[0].get('ename')}: {errors[0].get('evalue')}")
    memory_cell = notebook.cells.pop()
    peak = int("".join(o.get("text", "") for o in memory_cell.outputs).strip() or 0)
    # Whole seconds: JupyterLab writes a float such as 8.0 back as 8 (JavaScript has one number type).
    info = {"source_sha256": digest, "smoke": smoke, "seconds": round(seconds), "peak_memory_bytes": peak}
    notebook.metadata["mdiff_lite"] = info
    # As JupyterLab does when it starts a kernel: the spec's own names, not the .py header's
    # (tests/test_notebooks.py checks that the two agree).
    spec = get_kernel_spec(KERNEL)
    notebook.metadata["kernelspec"] = {"display_name": spec.display_name, "language": spec.language, "name": KERNEL}
    notebook = drop_text_representation_metadata(notebook)
    target = (Path(out) if out else path.parent) / (path.stem + ".ipynb")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    with os.fdopen(fd, "w") as f:
        nbformat.write(notebook, f)
    os.replace(tmp, target)
    return {"notebook": str(target), **info}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="jupytext .py notebooks")
    parser.add_argument("--smoke", action="store_true", help="MDIFF_SMOKE=1: shrink long computations")
    parser.add_argument("--out", help="write the .ipynb files here instead of beside their sources")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    failed = 0
    for p in args.paths:
        print(f"{p}: running ({'smoke' if args.smoke else 'full'} mode)", flush=True)
        try:
            r = execute(p, smoke=args.smoke, out=args.out, timeout=args.timeout)
        except Exception as error:  # report every notebook, then fail
            failed += 1
            print(f"{p}: FAILED: {type(error).__name__}: {str(error)[-2000:]}", flush=True)
            continue
        print(f"{p}: {r['seconds']:.0f} s, peak memory {r['peak_memory_bytes'] / 2**20:.0f} MiB -> {r['notebook']}",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
