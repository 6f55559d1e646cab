"""GLUE from tensorflow-datasets (``--source tfds``), read without TensorFlow.

``tfds.data_source`` gives random access to ``glue/<task>`` stored as ArrayRecord files and, unlike
``tfds.load``, does not need TensorFlow. The import of tensorflow-datasets is lazy, so the package
works without the optional extra; every failure inside tfds becomes a :class:`GlueDataError` that
points to the TSV source.

Rows are returned in the order of GLUE's files (tfds shuffles them when it prepares a dataset and
keeps the file position as ``idx``), so a seeded ``limit`` picks the same examples as the TSV
source does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from lora_jax.glue import ENV_DATA_DIR, Examples, GlueDataError, Task

INSTALL_HINT = "pip install 'lora-jax[tfds]'"

# Feature names of the two texts in each tfds GLUE config (tensorflow_datasets/text/glue.py).
TFDS_TEXTS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None),
    "sst2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
_READ_CHUNK = 8192  # records per batched read: fewer calls into ArrayRecord, bounded memory


def tfds_name(task: Task, split: str) -> tuple[str, str]:
    """The tfds dataset name and split of one of our splits, e.g. ``("glue/mnli",
    "validation_mismatched")`` for ``mnli-mm`` / ``dev``."""
    config = "mnli" if task.name == "mnli-mm" else task.name
    if config not in TFDS_TEXTS:
        raise GlueDataError(f"task {task.name!r} has no tensorflow-datasets config; "
                            f"known: {', '.join(TFDS_TEXTS)}")
    if split == "train":
        tfds_split = "train"
    elif split == "dev":
        tfds_split = {"mnli": "validation_matched",
                      "mnli-mm": "validation_mismatched"}.get(task.name, "validation")
    else:
        raise GlueDataError(f"unknown split {split!r}; use 'train' or 'dev'")
    return f"glue/{config}", tfds_split


def label_map(task: Task, names: Sequence[str]) -> np.ndarray:
    """Our class id for each tfds class id (``names`` are tfds' ClassLabel names).

    Where GLUE's files hold words (MNLI, QNLI, RTE), tfds uses those words as names and the match
    is by name: the orders differ (tfds MNLI is entailment, neutral, contradiction). Where the
    files hold digits (CoLA, SST-2, MRPC, QQP, WNLI), tfds' class id is that digit, whatever name
    it gives the class (WNLI's 1 is "entailment"), so id ``i`` is our label ``"i"``.
    """
    ours = task.labels
    if ours is None:
        raise GlueDataError(f"task {task.name!r} is a regression task and has no classes")
    names = [str(n) for n in names]
    if sorted(names) == sorted(ours):
        return np.array([ours.index(n) for n in names], np.int32)
    if ours == tuple(str(i) for i in range(len(names))):
        return np.arange(len(names), dtype=np.int32)
    raise GlueDataError(f"tensorflow-datasets' classes for {task.name} are {names}; expected "
                        f"{list(ours)} or one class per digit of {list(ours)}")


def _text(value: bytes | str, what: str) -> str:
    if isinstance(value, bytes):  # np.bytes_ too
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise GlueDataError(f"{what}: text is not valid UTF-8 ({e.reason})") from None
    return str(value)


def _tfds_error_hint(name: str, split: str, data_dir: str | os.PathLike | None,
                     error: Exception) -> GlueDataError:
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    where = f" in {data_dir}" if data_dir else ""
    return GlueDataError(
        f"tensorflow-datasets could not read {name} split {split}{where} "
        f"({type(error).__name__}: {first}); use the TSV source instead (--source tsv, the "
        f"default) with --data-dir or the environment variable {ENV_DATA_DIR}")


def _read_all(source) -> list[dict]:
    """All records; batched reads where the data source offers them (ArrayRecord does)."""
    n = len(source)
    getitems = getattr(source, "__getitems__", None)
    if getitems is None:
        return [source[i] for i in range(n)]
    records: list[dict] = []
    for start in range(0, n, _READ_CHUNK):
        records.extend(getitems(list(range(start, min(n, start + _READ_CHUNK)))))
    return records


def load_tfds(task: Task, split: str, data_dir: str | os.PathLike | None = None, *,
              download: bool = True) -> Examples:
    """One split of ``glue/<task>`` via ``tfds.data_source``, as :class:`Examples`.

    ``data_dir`` is tfds' data directory (default: ``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``). With ``download``, tfds downloads and prepares the dataset on
    first use (ArrayRecord files, so no TensorFlow is needed); this needs the network.
    """
    name, tfds_split = tfds_name(task, split)
    try:
        import tensorflow_datasets as tfds

        # tfds imports its dataset modules lazily; importing this one registers glue/*.
        import tensorflow_datasets.text.glue  # noqa: F401
    except ImportError as e:
        raise GlueDataError(f"--source tfds needs tensorflow-datasets, which is not importable "
                            f"({e}); install it with {INSTALL_HINT}, or use the TSV source "
                            f"(--source tsv) with --data-dir or {ENV_DATA_DIR}") from None
    try:
        source = tfds.data_source(
            name, split=tfds_split, data_dir=None if data_dir is None else os.fspath(data_dir),
            download=download,
            # data_source only defaults to ArrayRecord when no data_dir is given; TFRecord files
            # (tfds' default) cannot be read without TensorFlow.
            builder_kwargs={"file_format": "array_record"},
            # tfds' prepared copies on GCS are TFRecord files: no use here, and one more network
            # call that can hang offline.
            download_and_prepare_kwargs={
                "download_config": tfds.download.DownloadConfig(try_download_gcs=False)})
        label_names = None
        if not task.is_regression:
            label_names = list(source.dataset_info.features["label"].names)
        records = _read_all(source)
    except ImportError as e:  # tfds imports some of its dependencies only when it needs them
        raise GlueDataError(f"tensorflow-datasets is missing a dependency ({e}); install it "
                            f"with {INSTALL_HINT}") from e
    except Exception as e:  # tfds raises many types; all mean "no usable data here"
        raise _tfds_error_hint(name, tfds_split, data_dir, e) from e
    what = f"tfds {name} split {tfds_split}"
    key_a, key_b = TFDS_TEXTS[name.split("/", 1)[1]]
    wanted = [k for k in (key_a, key_b, "label") if k is not None]
    if records and not set(wanted) <= set(records[0]):
        raise GlueDataError(f"{what}: records have features {sorted(records[0])}; expected "
                            f"{wanted}")
    order = np.argsort([int(r.get("idx", 0)) for r in records], kind="stable")
    records = [records[i] for i in order]
    text_a = [_text(r[key_a], what) for r in records]
    text_b = None if key_b is None else [_text(r[key_b], what) for r in records]
    if task.is_regression:
        labels = np.array([r["label"] for r in records], np.float32)
    else:
        labels = np.array([r["label"] for r in records], np.int64)
    unlabeled = np.flatnonzero(labels == -1)
    if unlabeled.size:
        raise GlueDataError(f"{what}: {unlabeled.size} of {len(records)} rows have no label "
                            f"(-1), as in a test split")
    if label_names is not None:
        remap = label_map(task, label_names)
        bad = (labels < 0) | (labels >= len(remap))
        if bad.any():
            raise GlueDataError(f"{what}: label id {int(labels[bad][0])} is outside "
                                f"0..{len(remap) - 1}")
        labels = remap[labels]
    return Examples(text_a, text_b, labels, f"tfds:{name} ({tfds_split})")
