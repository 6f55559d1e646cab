"""Generate the GPT-2 fixtures that ``tests/test_gpt2.py`` checks ``lora_jax.gpt2`` against.

Run it in the peer environment (torch, transformers, peft; made by
``bash ../shared/bench/setup_peer_env.sh PEER_VENV``) from the repository root::

    PEER_VENV/bin/python tools/make_gpt2_fixture.py

No download: the model is ``GPT2LMHeadModel(GPT2Config(...))`` with random weights, a small
config made here (2 layers, width 32, 4 heads, a vocabulary of 96, 24 positions), seeded. It is
**not** a pretrained GPT-2; it only pins the architecture. It writes

* ``tests/fixtures/gpt2_tiny/config.json`` and ``model.safetensors``: ``save_pretrained``'s own
  output (tied embeddings: no ``lm_head.weight``);
* ``tests/fixtures/gpt2_tiny/reference.json``: two fixed sequences of token ids, the model's
  logits for them (eval mode), and the 8 tokens ``generate`` adds to each in greedy mode;
* ``tests/fixtures/peft_gpt2/``: a PEFT LoRA adapter on ``c_attn`` (r=2, lora_alpha=6,
  ``fan_in_fan_out=True``, as PEFT requires for GPT-2's ``Conv1D``), its ``lora_B`` set to
  seeded random values so that it matters, saved with ``save_pretrained``, and ``logits.json``:
  the adapted model's logits on the same sequences.

The export check, in two steps (the first needs lora_jax, the second PEFT)::

    .venv/bin/python tools/make_gpt2_fixture.py --export
    PEER_VENV/bin/python tools/make_gpt2_fixture.py --check tests/fixtures/peft_gpt2_export

``--export`` writes ``tests/fixtures/peft_gpt2_export``: a seeded lora_jax adapter in the
paper's form (r=2, alpha=6 on c_attn's query and value parts, B random) exported with
``export_peft_gpt2`` (which fuses the parts into one rank-4 c_attn adapter). ``--check DIR``
loads DIR with ``PeftModel.from_pretrained`` on the tiny model and writes PEFT's logits on the
fixed sequences to ``DIR/logits.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
CONFIG = dict(vocab_size=96, n_positions=24, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
              eos_token_id=0)
IDS = [[5, 17, 33, 2, 90, 41, 8, 61], [70, 3, 3, 28, 12, 55, 94, 19]]  # (B=2, T=8)
NEW_TOKENS = 8


def base():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**CONFIG)).eval()


def logits_of(model) -> list:
    import torch

    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.tolist()


def make() -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    out = FIXTURES / "gpt2_tiny"
    model = base()
    model.save_pretrained(out)
    with torch.no_grad():
        greedy = model.generate(torch.tensor(IDS), max_new_tokens=NEW_TOKENS, do_sample=False,
                                pad_token_id=0)[:, len(IDS[0]):].tolist()
    (out / "reference.json").write_text(json.dumps(
        {"config": CONFIG, "input_ids": IDS, "logits": logits_of(model), "greedy": greedy}))
    print(f"wrote {out}")

    peft_dir = FIXTURES / "peft_gpt2"
    cfg = LoraConfig(r=2, lora_alpha=6, target_modules=["c_attn"], fan_in_fan_out=True,
                     lora_dropout=0.0)
    adapted = get_peft_model(base(), cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    adapted.eval()
    adapted.save_pretrained(peft_dir)
    (peft_dir / "README.md").unlink(missing_ok=True)
    (peft_dir / "logits.json").write_text(json.dumps({"input_ids": IDS,
                                                      "logits": logits_of(adapted)}))
    print(f"wrote {peft_dir}")


def export() -> None:
    import tempfile

    import jax
    import jax.numpy as jnp

    from lora_jax import LoRAConfig
    from lora_jax.gpt2 import GPT2, load_gpt2
    from lora_jax.peft_gpt2 import export_peft_gpt2, save_gpt2_adapter
    from lora_jax.trees import perturb

    pre = load_gpt2(FIXTURES / "gpt2_tiny")
    lora = LoRAConfig(rank=2, alpha=6.0, targets=("query", "value"))
    v = GPT2(pre.config, lora).init({"params": jax.random.key(0), "lora": jax.random.key(1)},
                                    jnp.array(IDS))
    v = {"params": pre.params, "lora": perturb(v["lora"], jax.random.key(2), 0.3)}
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the manifest records the adapter's path: keep it relative
        try:
            f = save_gpt2_adapter("qv.safetensors", v, lora, pre)
            out = export_peft_gpt2(f, FIXTURES / "peft_gpt2_export",
                                   base_model_name_or_path="tests/fixtures/gpt2_tiny")
        finally:
            os.chdir(here)
    print(f"wrote {out}")


def check(peft_dir: Path) -> None:
    from peft import PeftModel

    model = PeftModel.from_pretrained(base(), peft_dir).eval()
    (peft_dir / "logits.json").write_text(json.dumps({"input_ids": IDS,
                                                      "logits": logits_of(model)}))
    print(f"wrote {peft_dir / 'logits.json'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", action="store_true", help="write peft_gpt2_export (lora_jax)")
    p.add_argument("--check", type=Path, help="record PEFT's logits of this directory")
    args = p.parse_args(argv)
    if args.export:
        export()
    elif args.check:
        check(args.check)
    else:
        make()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
