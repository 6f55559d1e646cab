"""What a method is: one record per way of fine-tuning, consulted everywhere.

Full fine-tuning, LoRA, BitFit, adapters and head-only training differ only in what the
record says: which variables train (label rules), the learning rate that suits them, the
variable collection the method adds to the model, whether its result folds into the base
weights, and how it maps to Hugging Face PEFT. The training step, the optimizer, the adapter
files, the parameter counts and the command line ask the record; no code compares method
names. A new method is one ``register(Method(...))``.

Label rules are ordered ``(regex, label)`` pairs over flattened variable paths such as
``params/bert/encoder/layer/0/attention/self/query/kernel`` or ``lora/bert/.../query/a``: the
first match decides ``trainable`` or ``frozen``, and a path that no rule covers is an error, so
a new kind of variable is never trained (or frozen) by accident. The same labels decide what
the optimizer updates and what an adapter file holds: a method's adapter file is exactly its
trainable leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

from lora_jax.lora import LORA
from lora_jax.models import ADAPTERS

TRAINABLE = "trainable"
FROZEN = "frozen"

HEAD = r"^params/classifier/"  # the task head: new for every task, trained by every method


@dataclass(frozen=True)
class Method:
    """One way of fine-tuning.

    ``rules``: the label rules (first match wins; every path must be covered).
    ``default_lr``: the learning rate a run takes when none is given.
    ``creates``: the variable collection the method adds beside ``'params'`` (``'lora'``,
    ``'adapters'``), or None; the model is built with that collection's layers.
    ``mergeable``: whether the trained result folds into a plain model of the base's
    architecture (``merge`` / ``export_merged``); adapters add layers, so they do not.
    ``peft_type``: PEFT's ``peft_type`` for ``export-peft`` / ``import-peft``, or None.
    ``lora_options``: ``LoRAConfig`` fields the method fixes (DoRA: ``(("dora", True),)``).
    """

    name: str
    rules: tuple[tuple[str, str], ...]
    default_lr: float
    creates: str | None = None
    mergeable: bool = True
    peft_type: str | None = None
    lora_options: tuple[tuple[str, object], ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        bad = [label for _, label in self.rules if label not in (TRAINABLE, FROZEN)]
        if not self.rules or bad:
            raise ValueError(f"method {self.name!r}: rules must be (regex, {TRAINABLE!r} or "
                             f"{FROZEN!r}) pairs, got labels {bad or 'none'}")


BUILTIN = (
    Method("full", ((r"^params/", TRAINABLE),), default_lr=5e-5,
           doc="every pretrained weight and the head"),
    Method("lora", ((r"^lora/", TRAINABLE), (HEAD, TRAINABLE), (r"^params/", FROZEN)),
           default_lr=1e-3, creates=LORA, peft_type="LORA",
           doc="low-rank A, B beside frozen weights (Hu et al. 2021), and the head"),
    Method("dora", ((r"^lora/", TRAINABLE), (HEAD, TRAINABLE), (r"^params/", FROZEN)),
           default_lr=1e-3, creates=LORA, peft_type="LORA", lora_options=(("dora", True),),
           doc="LoRA's direction plus a trained magnitude per output feature (Liu et al. 2024)"),
    Method("bitfit", ((HEAD, TRAINABLE), (r"^params/.*/bias$", TRAINABLE),
                      (r"^params/", FROZEN)), default_lr=2e-3,
           doc="every bias and the head (Ben Zaken et al. 2021)"),
    Method("adapter", ((r"^adapters/", TRAINABLE), (HEAD, TRAINABLE),
                       (r"^params/.*/LayerNorm/", TRAINABLE), (r"^params/", FROZEN)),
           default_lr=1e-3, creates=ADAPTERS, mergeable=False,
           doc="Houlsby bottleneck adapters, the LayerNorms and the head"),
    Method("head", ((HEAD, TRAINABLE), (r"^params/", FROZEN)), default_lr=2e-3,
           doc="the task head only: what the frozen features give"),
)
REGISTRY: dict[str, Method] = {m.name: m for m in BUILTIN}
METHODS = tuple(m.name for m in BUILTIN)  # the built-in methods (command-line choices)
DEFAULT_LR = {m.name: m.default_lr for m in BUILTIN}
METHOD_RULES = {m.name: m.rules for m in BUILTIN}


def register(method: Method, *, replace: bool = False) -> Method:
    """Add a method to the registry (``replace`` to redefine one); returns it."""
    if method.name in REGISTRY and not replace:
        raise ValueError(f"method {method.name!r} exists already; give replace=True")
    REGISTRY[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_method(name: str | Method) -> Method:
    """The record of a method, by name (a record is returned as is)."""
    if isinstance(name, Method):
        return name
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; choose one of {method_names()}") from None
