"""GLUE: the nine tasks, their TSV files, and where to find them.

Files, in order of preference:
1. a directory in the official GLUE TSV layout (``<dir>/<TASK>/{train,dev}.tsv``), given by
   ``data_dir`` / ``--data-dir`` or the environment variable ``LORA_JAX_GLUE_DIR``;
2. otherwise the official GLUE archives, downloaded once into a cache folder and checked against
   their sha256 (the same files and checksums tensorflow-datasets uses); with no network this
   fails fast with a message that says how to supply a directory.

The TSV reader handles GLUE's quirks: quoting is off (rows contain ``"``), MRPC starts with a
UTF-8 BOM, CoLA has no header, some files lack a final newline. A malformed row is an error that
names the file and the line.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lora_jax.files import atomic_write

ENV_DATA_DIR = "LORA_JAX_GLUE_DIR"
ENV_CACHE = "LORA_JAX_CACHE"
SOURCES = ("tsv", "tfds")
# Longest GLUE line is under 2,000 characters; a line 50x longer is a file with the wrong line
# endings (a lone \r), a binary file, or a concatenation gone wrong, not a sentence.
MAX_LINE_CHARS = 100_000


class GlueDataError(ValueError):
    """Bad or missing GLUE data; the message names the file (and line) or the missing piece."""


@dataclass(frozen=True)
class Task:
    """One GLUE task: where its files are and how to read a row.

    Columns are header names, or indices for CoLA (no header). ``labels`` is None for the
    regression task STS-B. ``primary`` is the metric the LoRA paper reports for the task.
    """

    name: str
    folder: str
    text_a: str | int
    text_b: str | int | None
    label: str | int
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    primary: str
    dev_file: str = "dev.tsv"
    header: bool = True
    min_columns: int = 0  # CoLA rows have exactly 4 columns
    names: tuple[str, ...] | None = None  # readable class names where the files say 0 / 1

    @property
    def label_names(self) -> tuple[str, ...]:
        """What each output means, in output order, as a model hub shows it (``id2label``):
        the class names (tensorflow-datasets' names where the files use 0 / 1), or the score's
        column name for the regression task."""
        if self.labels is None:
            return (str(self.label),)
        return self.names or self.labels

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


_NLI3 = ("contradiction", "entailment", "neutral")
_ENT2 = ("entailment", "not_entailment")
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("cola", "CoLA", 3, None, 1, ("0", "1"), ("mcc", "accuracy"), "mcc",
         header=False, min_columns=4, names=("unacceptable", "acceptable")),
    Task("sst2", "SST-2", "sentence", None, "label", ("0", "1"), ("accuracy",), "accuracy",
         names=("negative", "positive")),
    Task("mrpc", "MRPC", "#1 String", "#2 String", "Quality", ("0", "1"), ("accuracy", "f1"),
         "accuracy", names=("not_equivalent", "equivalent")),
    Task("qqp", "QQP", "question1", "question2", "is_duplicate", ("0", "1"), ("accuracy", "f1"),
         "accuracy", names=("not_duplicate", "duplicate")),
    Task("stsb", "STS-B", "sentence1", "sentence2", "score", None, ("pearson", "spearman"),
         "pearson"),
    Task("mnli", "MNLI", "sentence1", "sentence2", "gold_label", _NLI3, ("accuracy",), "accuracy",
         dev_file="dev_matched.tsv"),
    Task("mnli-mm", "MNLI", "sentence1", "sentence2", "gold_label", _NLI3, ("accuracy",),
         "accuracy", dev_file="dev_mismatched.tsv"),
    Task("qnli", "QNLI", "question", "sentence", "label", _ENT2, ("accuracy",), "accuracy"),
    Task("rte", "RTE", "sentence1", "sentence2", "label", _ENT2, ("accuracy",), "accuracy"),
    Task("wnli", "WNLI", "sentence1", "sentence2", "label", ("0", "1"), ("accuracy",),
         "accuracy", names=("not_entailment", "entailment")),
)}


def get_task(name: str) -> Task:
    """A task by name, forgiving case and dashes: ``SST-2``, ``sst2``, ``STS-B``, ``mnli-mm``."""
    key = name.lower().replace("_", "-")
    key = key if key in TASKS else key.replace("-", "")
    if key not in TASKS:
        raise GlueDataError(f"unknown task {name!r}; GLUE tasks are {', '.join(TASKS)}")
    return TASKS[key]


@dataclass
class Examples:
    """Raw examples of one split: texts and labels (int class ids, or float scores)."""

    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.text_a)

    def subset(self, idx: np.ndarray) -> Examples:
        b = None if self.text_b is None else [self.text_b[i] for i in idx]
        return Examples([self.text_a[i] for i in idx], b, self.labels[idx], self.source)


# --- reading TSV files --------------------------------------------------------------------------


def read_tsv(path: str | os.PathLike, task: Task) -> Examples:
    """Read one GLUE TSV file, quoting off. Every problem names the file and the line: wrong
    column counts, labels outside the task's set (or scores that are not finite numbers), empty
    lines, bytes that are not UTF-8, lines longer than ``MAX_LINE_CHARS``, no rows at all."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise GlueDataError(f"{path}: cannot read ({e.strerror})") from None
    body = raw.removeprefix(b"\xef\xbb\xbf")  # MRPC's files start with a UTF-8 BOM
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body[: e.start].count(b"\n") + 1
        raise GlueDataError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # final newline (CoLA's dev file has none)
    for n, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE_CHARS:
            raise GlueDataError(f"{path}:{n}: line of {len(line):,} characters (limit "
                                f"{MAX_LINE_CHARS:,}); is this a tab-separated text file with "
                                "\\n line endings?")
    first = 0
    cols = {}
    if task.header:
        if not lines:
            raise GlueDataError(f"{path}: empty file, expected a header line")
        header = lines[0].rstrip("\r").split("\t")
        for c in (task.text_a, task.text_b, task.label):
            if c is not None and c not in header:
                found = str(header) if len(str(header)) <= 200 else f"{str(header)[:200]}..."
                fits = [t.name for t in TASKS.values() if t.header and all(
                    x is None or x in header for x in (t.text_a, t.text_b, t.label))]
                hint = f"; these columns are those of {', '.join(fits)}" if fits else ""
                raise GlueDataError(f"{path}:1: header has no column {c!r} (found {found}) "
                                    f"for task {task.name}{hint}")
        cols = {c: header.index(c) for c in (task.text_a, task.text_b, task.label) if c}
        first = 1
    ia = cols.get(task.text_a, task.text_a)
    ib = None if task.text_b is None else cols.get(task.text_b, task.text_b)
    il = cols.get(task.label, task.label)
    need = max(i for i in (ia, ib, il) if i is not None) + 1
    need = max(need, task.min_columns)
    label_ids = None if task.labels is None else {v: i for i, v in enumerate(task.labels)}
    text_a, text_b, labels = [], [], []
    for n, line in enumerate(lines[first:], start=first + 1):
        row = line.rstrip("\r").split("\t")
        if line.strip() == "":
            raise GlueDataError(f"{path}:{n}: empty line")
        if len(row) < need or (task.min_columns and len(row) != task.min_columns):
            want = task.min_columns or f"at least {need}"
            raise GlueDataError(f"{path}:{n}: expected {want} tab-separated columns, "
                                f"got {len(row)}")
        value = row[il].strip()
        if label_ids is None:
            try:
                score = float(value)
            except ValueError:
                raise GlueDataError(f"{path}:{n}: score {value!r} is not a number") from None
            if not math.isfinite(score):
                raise GlueDataError(f"{path}:{n}: score {value!r} is not a finite number")
            labels.append(score)
        elif value in label_ids:
            labels.append(label_ids[value])
        else:
            raise GlueDataError(f"{path}:{n}: label {value!r} is not one of {task.labels}")
        text_a.append(row[ia])
        if ib is not None:
            text_b.append(row[ib])
    if not text_a:
        raise GlueDataError(f"{path}: no examples" + (" after the header" if task.header else ""))
    dtype = np.float32 if label_ids is None else np.int32
    return Examples(text_a, text_b if task.text_b is not None else None,
                    np.asarray(labels, dtype), str(path))


# --- finding the files --------------------------------------------------------------------------

# The official GLUE archives (those tensorflow-datasets downloads): url, size, sha256.
GLUE_ARCHIVES = {
    "CoLA": ("https://dl.fbaipublicfiles.com/glue/data/CoLA.zip", 376971,
             "f212fcd832b8f7b435fb991f101abf89f96b933ab400603bf198960dfc32cbff"),
    "SST-2": ("https://dl.fbaipublicfiles.com/glue/data/SST-2.zip", 7439277,
              "d67e16fb55739c1b32cdce9877596db1c127dc322d93c082281f64057c16deaa"),
    "QQP": ("https://dl.fbaipublicfiles.com/glue/data/QQP.zip", 41696084,
            "40e7c862c04eb26ee04b67fd900e76c45c6ba8e6d8fab4f8f1f8072a1a3fbae0"),
    "STS-B": ("https://dl.fbaipublicfiles.com/glue/data/STS-B.zip", 802872,
              "e60a6393de5a8b5b9bac5020a1554b54e3691f9d600b775bd131e613ac179c85"),
    "MNLI": ("https://dl.fbaipublicfiles.com/glue/data/MNLI.zip", 312783507,
             "e7c1d896d26ed6caf700110645df426cc2d8ebf02a5ab743d5a5c68ac1c83633"),
    "QNLI": ("https://dl.fbaipublicfiles.com/glue/data/QNLIv2.zip", 10627589,
             "e634e78627a29adaecd4f955359b22bf5e70f2cbd93b493f2d624138a0c0e5f5"),
    "RTE": ("https://dl.fbaipublicfiles.com/glue/data/RTE.zip", 697150,
            "6bf86de103ecd335f3441bd43574d23fef87ecc695977a63b82d5efb206556ee"),
    "WNLI": ("https://dl.fbaipublicfiles.com/glue/data/WNLI.zip", 28999,
             "ae0e8e4d16f4d46d4a0a566ec7ecceccfd3fbfaa4a7a4b4e02848c0f2561ac46"),
}
# MRPC is not hosted by GLUE: its train/dev split is rebuilt from the SentEval copy of the
# corpus and GLUE's list of dev pair ids, as the GLUE download script does.
MRPC_FILES = {
    "train": ("https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt",
              1047044, "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89"),
    "dev_ids": ("https://firebasestorage.googleapis.com/v0/b/mtl-sentence-representations."
                "appspot.com/o/data%2Fmrpc_dev_ids.tsv?alt=media&token=ec5c0836-31d5-48f4-b431-"
                "7480817f1adc", 6222,
                "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7"),
}
DOWNLOAD_TIMEOUT_S = 15


def cache_dir() -> Path:
    """Where downloads go: ``$LORA_JAX_CACHE`` or ``~/.cache/lora_jax``."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "lora_jax")


def _no_data_hint(task: Task) -> str:
    return (f"supply a GLUE directory holding {task.folder}/train.tsv and {task.folder}/"
            f"{task.dev_file} with --data-dir or the environment variable {ENV_DATA_DIR}")


def fetch(url: str, size: int, sha256: str, task: Task) -> bytes:
    """Download ``url`` and check its size and sha256; fail fast and clearly without network."""
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
            data = r.read()
    except (urllib.error.URLError, OSError) as e:
        raise GlueDataError(f"could not download {url} ({getattr(e, 'reason', e)}); "
                            f"{_no_data_hint(task)}") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != size or digest != sha256:
        raise GlueDataError(f"download of {url} is corrupt: {len(data)} bytes, sha256 "
                            f"{digest}; expected {size} bytes, sha256 {sha256}")
    return data


def task_files(root: Path, task: Task) -> list[Path]:
    """The files a GLUE root holds for ``task``: ``<root>/<TASK>/train.tsv`` and its dev file."""
    return [root / task.folder / "train.tsv", root / task.folder / task.dev_file]


def download_task(task: Task, root: Path | None = None) -> Path:
    """Download and unpack one task into ``<cache>/glue/<TASK>/`` (once); returns ``<cache>/glue``.

    Files are extracted to temporary names and renamed, so an interrupted download leaves
    nothing that looks complete.
    """
    root = root or cache_dir() / "glue"
    dest = root / task.folder
    if all(p.is_file() for p in task_files(root, task)):
        return root
    dest.mkdir(parents=True, exist_ok=True)
    if task.folder == "MRPC":
        _build_mrpc(dest, task)
        return root
    url, size, sha = GLUE_ARCHIVES[task.folder]
    with zipfile.ZipFile(io.BytesIO(fetch(url, size, sha, task))) as z:
        for member in z.namelist():
            name = Path(member).name
            if name.endswith(".tsv") and Path(member).parent.name == task.folder:
                atomic_write(dest / name, lambda tmp, m=member: Path(tmp).write_bytes(z.read(m)))
    return root


def _build_mrpc(dest: Path, task: Task) -> None:
    corpus = fetch(*MRPC_FILES["train"], task).decode("utf-8-sig").splitlines()
    dev_ids = {tuple(line.split("\t")) for line in
               fetch(*MRPC_FILES["dev_ids"], task).decode("utf-8-sig").splitlines()}
    header, rows = corpus[0], [r for r in corpus[1:] if r.strip()]
    dev = [r for r in rows if tuple(r.split("\t")[1:3]) in dev_ids]
    train = [r for r in rows if tuple(r.split("\t")[1:3]) not in dev_ids]
    for name, part in (("train.tsv", train), ("dev.tsv", dev)):
        body = "\n".join([header, *part]) + "\n"
        atomic_write(dest / name, lambda tmp, b=body: Path(tmp).write_text(b, encoding="utf-8"))


def local_data_dir(task: Task) -> Path | None:
    """The GLUE root that holds ``task`` on this machine without a download:
    ``$LORA_JAX_GLUE_DIR`` when it is set (whether or not it holds the task: that is
    ``resolve_data_dir``'s error to report), else the download cache when it has the task,
    else None (the notebooks' tests skip then: tests never touch the network)."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR])
    root = cache_dir() / "glue"
    return root if all(p.is_file() for p in task_files(root, task)) else None


def resolve_data_dir(data_dir: str | os.PathLike | None, task: Task) -> Path:
    """The GLUE root for ``task``: the given directory, else ``$LORA_JAX_GLUE_DIR``, else the
    download cache (downloading on first use)."""
    given = data_dir or os.environ.get(ENV_DATA_DIR)
    if not given:
        return download_task(task)
    root = Path(given)
    folder = root / task.folder
    expected = task_files(root, task)
    if not all(p.is_file() for p in expected):
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no such folder"
        missing = ", ".join(str(p) for p in expected if not p.is_file())
        raise GlueDataError(f"{root}: missing {missing} (found in {folder}: {found}); the GLUE "
                            f"layout is <dir>/{task.folder}/train.tsv and "
                            f"<dir>/{task.folder}/{task.dev_file}")
    return root
