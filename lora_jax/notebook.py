"""Small helpers the notebooks share: quick mode and where figures go.

``LORA_JAX_QUICK=1`` (set by ``make test``) shrinks data and steps so that every notebook runs
top to bottom in a minute or two; the committed notebooks hold the outputs of full runs.
"""

from __future__ import annotations

import os
from pathlib import Path

FIGURES = Path(__file__).resolve().parents[1] / "results" / "figures"


def quick() -> bool:
    """True when ``LORA_JAX_QUICK`` is set to a non-empty value other than ``0``."""
    return os.environ.get("LORA_JAX_QUICK", "") not in ("", "0")


def pick(full, quick_value):
    """``full`` normally, ``quick_value`` in quick mode (sizes, step counts, task lists)."""
    return quick_value if quick() else full


def save_figure(fig, name: str) -> Path | None:
    """Save ``fig`` as ``results/figures/<name>.png`` for the slides, in full runs only (a quick
    run must not overwrite the committed figure with a smaller experiment's)."""
    if quick():
        return None
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
