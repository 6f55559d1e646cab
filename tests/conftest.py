"""Shared fixtures: a tiny model with adapters, and a batch for it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax import LoRAConfig, ModelConfig, SequenceClassifier


def make_batch(cfg: ModelConfig, batch: int = 4, length: int = 12, seed: int = 0) -> dict:
    """A random batch with some padding at the end of every other row."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    ids = jax.random.randint(k1, (batch, length), 3, cfg.vocab_size)
    mask = jnp.ones((batch, length), jnp.int32).at[::2, length - 3:].set(0)
    ids = jnp.where(mask > 0, ids, cfg.pad_token_id)
    return {
        "input_ids": ids,
        "token_type_ids": jnp.zeros_like(ids).at[:, length // 2:].set(int(cfg.type_vocab_size > 1)),
        "attention_mask": mask,
        "label": jax.random.randint(k2, (batch,), 0, max(cfg.num_labels, 2)),
    }


def init_model(cfg: ModelConfig, lora: LoRAConfig | None, seed: int = 0):
    model = SequenceClassifier(cfg, lora)
    k_params, k_lora = jax.random.split(jax.random.key(seed))
    ids = jnp.zeros((1, 8), jnp.int32)
    variables = model.init({"params": k_params, "lora": k_lora}, ids)
    return model, variables


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return ModelConfig.tiny()


WORDS = ("good great fine nice happy bad awful poor sad ugly the a movie film is was very not "
         "plot acting cat dog sat on mat").split()


def write_tiny_checkpoint(path, seed: int = 0, num_labels: int = 2):
    """A tiny BERT checkpoint directory (config.json, model.safetensors, tokenizer.json) in
    Hugging Face's layout, written with our own exporter and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from lora_jax.pretrained import save_pretrained

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    cfg = ModelConfig.tiny(vocab_size=len(vocab), num_labels=num_labels,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    params = SequenceClassifier(cfg).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))
    params = {k: v for k, v in params["params"].items() if k != "classifier"}
    save_pretrained(params, cfg, path)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(path / "tokenizer.json"))
    return path


def write_tiny_glue(root, n_train: int = 96, n_dev: int = 32, seed: int = 0):
    """SST-2-, RTE- and STS-B-shaped TSVs whose labels follow the words (learnable quickly)."""
    rng = np.random.default_rng(seed)
    pos, neg = WORDS[:5], WORDS[5:10]

    def sentence(label):
        words = list(rng.choice(pos if label else neg, 2)) + list(rng.choice(WORDS[10:], 3))
        return " ".join(rng.permutation(words))

    for split, n in (("train", n_train), ("dev", n_dev)):
        labels = rng.integers(0, 2, n)
        rows = "".join(f"{sentence(y)} \t{y}\n" for y in labels)
        (root / "SST-2").mkdir(parents=True, exist_ok=True)
        (root / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
        rte = "".join(f"{i}\t{sentence(y)}\t{sentence(y)}\t"
                      f"{'entailment' if y else 'not_entailment'}\n" for i, y in enumerate(labels))
        (root / "RTE").mkdir(parents=True, exist_ok=True)
        (root / "RTE" / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + rte)
        sts = "".join(f"{i}\tg\tf\t2012\t{i}\tn\tn\t{sentence(y)}\t{sentence(y)}\t{4.0 * y + 0.5}\n"
                      for i, y in enumerate(labels))
        (root / "STS-B").mkdir(parents=True, exist_ok=True)
        (root / "STS-B" / f"{split}.tsv").write_text(
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\t"
            "score\n" + sts)
    return root


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory):
    return write_tiny_glue(tmp_path_factory.mktemp("glue"))
