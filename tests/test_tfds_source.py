"""The tensorflow-datasets source: names, class ids, and loading with no network and no TensorFlow.

No test downloads anything: ``mock_data`` fakes the records, and the parity tests let tfds prepare
``glue/<task>`` from tiny local TSV files (its download step is replaced by a local folder). Any
socket use fails at once, so a mistake shows up as an error, not as a hang.
"""

import socket
import sys

import numpy as np
import pytest
from conftest import write_tiny_glue

from lora_jax import tfds_source
from lora_jax.data import TASKS, GlueDataError, get_task, load_split
from lora_jax.tfds_source import label_map, load_tfds, tfds_name


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in these tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


# --- without tensorflow-datasets ----------------------------------------------------------------


@pytest.mark.parametrize("task, split, expected", [
    ("rte", "train", ("glue/rte", "train")),
    ("rte", "dev", ("glue/rte", "validation")),
    ("sst2", "dev", ("glue/sst2", "validation")),
    ("mnli", "train", ("glue/mnli", "train")),
    ("mnli", "dev", ("glue/mnli", "validation_matched")),
    ("mnli-mm", "dev", ("glue/mnli", "validation_mismatched")),
])
def test_tfds_name(task, split, expected):
    assert tfds_name(get_task(task), split) == expected


def test_every_task_has_a_tfds_config():
    for task in TASKS.values():
        assert tfds_name(task, "dev")[0].startswith("glue/")


@pytest.mark.parametrize("task, names, expected", [
    # tfds orders MNLI's classes differently from our alphabetical order
    ("mnli", ["entailment", "neutral", "contradiction"], [1, 2, 0]),
    ("rte", ["entailment", "not_entailment"], [0, 1]),
    ("qnli", ["entailment", "not_entailment"], [0, 1]),
    # digit labels: tfds' id is GLUE's digit, whatever tfds calls the class
    ("wnli", ["not_entailment", "entailment"], [0, 1]),
    ("sst2", ["negative", "positive"], [0, 1]),
    ("cola", ["unacceptable", "acceptable"], [0, 1]),
])
def test_label_map(task, names, expected):
    assert label_map(get_task(task), names).tolist() == expected


def test_label_map_rejects_unknown_classes():
    with pytest.raises(GlueDataError, match="classes for rte"):
        label_map(get_task("rte"), ["yes", "no", "maybe"])


def test_missing_tfds_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(GlueDataError, match=r"pip install 'lora-jax\[tfds\]'"):
        load_split("rte", "train", source="tfds")


# --- with tensorflow-datasets, mocked records ----------------------------------------------------


@pytest.fixture
def tfds():
    return pytest.importorskip("tensorflow_datasets")


@pytest.fixture
def mocked(tfds, monkeypatch):
    """``mock_data`` for glue/*, read record by record: the mocked source's batched read
    (``__getitems__``) is broken in tfds 4.9.10, the real one is tested below."""
    import tensorflow_datasets.text.glue  # noqa: F401  (mock_data looks glue/* up by name)

    monkeypatch.setattr(tfds_source, "_read_all", lambda source: [source[i]
                                                                 for i in range(len(source))])
    return lambda n: tfds.testing.mock_data(num_examples=n,
                                            policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.mark.parametrize("task, split, n", [("rte", "train", 7), ("sst2", "dev", 5),
                                            ("stsb", "dev", 6), ("mnli-mm", "dev", 4)])
def test_mock_data(mocked, task, split, n):
    with mocked(n):
        ex = load_split(task, split, source="tfds")
    t = get_task(task)
    assert len(ex) == len(ex.labels) == n
    assert all(isinstance(s, str) for s in ex.text_a)
    if t.text_b is None:
        assert ex.text_b is None
    else:
        assert len(ex.text_b) == n and all(isinstance(s, str) for s in ex.text_b)
    if t.is_regression:
        assert ex.labels.dtype == np.float32
    else:
        assert ex.labels.dtype == np.int32
        assert ex.labels.min() >= 0 and ex.labels.max() < t.num_labels
    assert ex.source.startswith("tfds:glue/")


def test_limit_subsamples_tfds(mocked):
    with mocked(20):
        ex = load_split("rte", "train", source="tfds", limit=8, seed=1)
    assert len(ex) == 8


def test_unprepared_dataset_points_to_tsv(tfds, tmp_path):
    with pytest.raises(GlueDataError, match="LORA_JAX_GLUE_DIR") as e:
        load_tfds(get_task("rte"), "train", data_dir=tmp_path, download=False)
    assert "--data-dir" in str(e.value)


# --- with tensorflow-datasets, real files prepared from local TSVs -------------------------------


def write_glue_for_tfds(root):
    """Tiny GLUE TSVs of the tasks below, with the test files tfds also prepares."""
    write_tiny_glue(root, n_train=24, n_dev=10)
    (root / "SST-2" / "test.tsv").write_text("index\tsentence\n0\ta film\n")
    (root / "RTE" / "test.tsv").write_text("index\tsentence1\tsentence2\n0\tcat\ta dog\n")
    (root / "STS-B" / "test.tsv").write_text("index\tsentence1\tsentence2\n0\ta\tb\n")
    (root / "CoLA").mkdir()
    for split, n in (("train", 9), ("dev", 4)):
        rows = "".join(f"gj04\t{i % 2}\t\tsentence “{i}” café\n" for i in range(n))
        (root / "CoLA" / f"{split}.tsv").write_text(rows[:-1])  # CoLA: no header, no final \n
    (root / "CoLA" / "test.tsv").write_text("index\tsentence\n0\tx\n")
    (root / "MNLI").mkdir()
    classes = ("entailment", "neutral", "contradiction")
    for name, n in (("train", 12), ("dev_matched", 6), ("dev_mismatched", 5)):
        rows = "".join(f"{i}\tpremise {name} {i}\thypothesis {i}\t{classes[i % 3]}\n"
                       for i in range(n))
        (root / "MNLI" / f"{name}.tsv").write_text("index\tsentence1\tsentence2\tgold_label\n"
                                                   + rows)
    for name in ("test_matched", "test_mismatched"):
        (root / "MNLI" / f"{name}.tsv").write_text("index\tsentence1\tsentence2\n0\ta\tb\n")
    return root


@pytest.fixture
def local_tfds(tfds, tmp_path, monkeypatch):
    """A tfds data dir whose glue/* datasets are prepared, on first use, from local TSV files."""
    import tensorflow_datasets.text.glue  # noqa: F401

    glue = write_glue_for_tfds(tmp_path / "glue")
    manager = tfds.download.DownloadManager

    def no_download(self, *args, **kwargs):
        raise AssertionError("a test tried a real tfds download")

    monkeypatch.setattr(manager, "download_and_extract", lambda self, url: str(glue))
    monkeypatch.setattr(manager, "download", no_download)
    monkeypatch.setattr(tfds_source, "_READ_CHUNK", 5)  # several batched reads per split
    return glue, tmp_path / "tfds"


@pytest.mark.parametrize("task", ["cola", "sst2", "rte", "stsb", "mnli", "mnli-mm"])
def test_tfds_matches_tsv(local_tfds, task):
    """Same texts, same class ids, same order as the TSV reader: tfds renumbers MNLI's classes
    and shuffles rows when it prepares a dataset."""
    glue, tfds_dir = local_tfds
    for split in ("train", "dev"):
        want = load_split(task, split, data_dir=glue)
        got = load_split(task, split, data_dir=tfds_dir, source="tfds")
        assert got.text_a == want.text_a
        assert got.text_b == want.text_b
        assert got.labels.dtype == want.labels.dtype
        np.testing.assert_array_equal(got.labels, want.labels)


def test_unlabeled_rows_are_an_error(local_tfds, monkeypatch):
    _, tfds_dir = local_tfds
    monkeypatch.setattr(tfds_source, "tfds_name", lambda task, split: ("glue/rte", "test"))
    with pytest.raises(GlueDataError, match="no label"):
        load_split("rte", "dev", data_dir=tfds_dir, source="tfds")
