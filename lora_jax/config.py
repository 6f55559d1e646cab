"""What defines a run: ``TrainConfig``, every field checked once, here.

The command line builds one from its flags and relies on these checks (each error names the
field); ``config.json`` in a run directory and the adapter file's metadata hold its JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from lora_jax.glue import SOURCES, GlueDataError, get_task
from lora_jax.lora import INIT_SCHEMES, LORA, LoRAConfig
from lora_jax.methods import get_method, method_names
from lora_jax.models import ADAPTERS, COMPUTE_DTYPES, check_targets
from lora_jax.quant import FORMATS
from lora_jax.validate import ConfigError, boolean, choice, integer, names, real


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; saved as ``config.json`` in the run directory.

    ``learning_rate=None`` takes the method's default (``Method.default_lr``). ``max_steps``
    caps the number of steps (the schedule then spans ``max_steps``). ``train_limit``
    subsamples the training set with ``seed``. ``lora_init`` starts the adapters (``pissa``:
    from the weights' singular vectors); ``loraplus_ratio`` trains every B at that multiple of
    the learning rate (LoRA+). Both need a method that creates ``'lora'``.
    """

    task: str = "sst2"
    method: str = "lora"
    model: str = "minilm"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("query", "value")
    lora_dropout: float = 0.0
    rslora: bool = False
    lora_init: str = "kaiming"
    loraplus_ratio: float | None = None
    adapter_size: int = 64
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float | None = None
    max_length: int = 128
    train_limit: int | None = None
    eval_limit: int | None = None
    seed: int = 0
    source: str = "tsv"
    save_every: int | None = None
    dtype: str = "float32"  # compute dtype; "bfloat16" for GPU/TPU (params stay float32)
    quantize: str | None = None  # QLoRA: the frozen encoder kernels in nf4, nf4-dq or int8

    def __post_init__(self) -> None:
        """Every field checked here, the type before the value, each error naming it
        (``validate``), so a bad run fails before it loads anything (the model-dependent
        ones: ``check_rank``, ``check_max_length``)."""
        own = "TrainConfig"
        if not isinstance(self.task, str):
            raise ConfigError(f"{own}.task must be a GLUE task name, got {self.task!r}")
        try:
            get_task(self.task)
        except GlueDataError as e:
            raise ConfigError(f"{own}.task: {e}") from None
        choice(own, "method", self.method, method_names())
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"{own}.model must name a checkpoint or directory, "
                              f"got {self.model!r}")
        checked = {}
        for f in ("epochs", "batch_size", "eval_batch_size", "adapter_size", "rank"):
            checked[f] = integer(own, f, getattr(self, f), minimum=1)
        for f in ("max_steps", "train_limit", "eval_limit", "save_every"):
            checked[f] = integer(own, f, getattr(self, f), minimum=1, optional=True)
        checked["seed"] = integer(own, "seed", self.seed, minimum=0)
        checked["max_length"] = integer(own, "max_length", self.max_length, minimum=1)
        if checked["max_length"] < 4:
            raise ConfigError(f"{own}.max_length must be at least 4 ([CLS] a [SEP]...), "
                              f"got {self.max_length}")
        checked["alpha"] = real(own, "alpha", self.alpha, low=0, low_open=True)
        for f in ("learning_rate", "max_grad_norm", "loraplus_ratio"):
            checked[f] = real(own, f, getattr(self, f), low=0, low_open=True, optional=True)
        checked["weight_decay"] = real(own, "weight_decay", self.weight_decay, low=0)
        checked["warmup_ratio"] = real(own, "warmup_ratio", self.warmup_ratio, low=0, high=1)
        checked["lora_dropout"] = real(own, "lora_dropout", self.lora_dropout, low=0, high=1)
        checked["rslora"] = boolean(own, "rslora", self.rslora)
        choice(own, "lora_init", self.lora_init, INIT_SCHEMES)
        method = get_method(self.method)
        for f, off in (("lora_init", "kaiming"), ("loraplus_ratio", None)):
            if method.creates != LORA and getattr(self, f) != off:
                raise ConfigError(f"{own}.{f}={getattr(self, f)!r} needs a method with LoRA "
                                  f"layers; method {self.method!r} has none")
        checked["targets"] = names(own, "targets", self.targets)
        choice(own, "dtype", self.dtype, tuple(COMPUTE_DTYPES))
        choice(own, "source", self.source, SOURCES)
        if self.quantize is not None:
            choice(own, "quantize", self.quantize, FORMATS)
            if self.lora_init == "pissa":
                raise ConfigError(f"{own}.lora_init='pissa' with quantize={self.quantize!r}: "
                                  "PiSSA takes the SVD of the float kernels and freezes the "
                                  "residual, which a quantized base no longer has (quantizing "
                                  "the residual, QPiSSA, is not implemented); use one of them")
        for f, v in checked.items():  # normalised: 16 -> 16.0 for floats, a list -> a tuple
            object.__setattr__(self, f, v)
        check_targets(self._lora())

    @property
    def lr(self) -> float:
        return (self.learning_rate if self.learning_rate is not None
                else get_method(self.method).default_lr)

    def lora_config(self) -> LoRAConfig | None:
        """The LoRA layers the network gets: for a method that creates ``'lora'``, else None."""
        if get_method(self.method).creates != LORA:
            return None
        return self._lora()

    def _lora(self) -> LoRAConfig:
        return LoRAConfig(rank=self.rank, alpha=self.alpha, targets=self.targets,
                          dropout=self.lora_dropout, rslora=self.rslora, init=self.lora_init,
                          **dict(get_method(self.method).lora_options))

    def adapter_config(self) -> int | None:
        """The bottleneck size of the adapter layers: for a method that creates them."""
        return self.adapter_size if get_method(self.method).creates == ADAPTERS else None

    def to_json(self) -> dict:
        return {**asdict(self), "targets": list(self.targets), "lr": self.lr}

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})
