"""Execute a notebook in place (a full run, for the committed outputs), from ``notebooks/``.

    .venv/bin/python tools/run_notebook.py notebooks/02_lora_from_scratch.ipynb
    LORA_JAX_QUICK=1 .venv/bin/python tools/run_notebook.py notebooks/02_...ipynb --no-save

Outputs must not hold machine paths: the notebooks print paths relative to the repository.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    p.add_argument("--no-save", action="store_true", help="execute only; keep the file as is")
    args = p.parse_args()
    for name in args.notebooks:
        path = Path(name).resolve()
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        print(f"{path.name}: {time.perf_counter() - t0:.0f} s")
        if not args.no_save:
            nbformat.write(nb, path)


if __name__ == "__main__":
    main()
