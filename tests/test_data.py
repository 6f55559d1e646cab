"""GLUE readers (with the known quirks), sources, bucketing and batches."""

import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from lora_jax import glue as data_mod
from lora_jax.data import (
    TASKS,
    Batcher,
    Encoded,
    GlueDataError,
    choose_buckets,
    get_task,
    load_split,
    read_tsv,
)

REAL = os.environ.get("LORA_JAX_GLUE_DIR")


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_cola_without_header_and_without_final_newline(tmp_path):
    p = write(tmp_path / "CoLA" / "dev.tsv",
              'gj04\t1\t\tThe "sailors" rode.\ngj04\t0\t*\tRode the sailors the.')
    ex = read_tsv(p, get_task("cola"))
    assert ex.text_a == ['The "sailors" rode.', "Rode the sailors the."]
    assert ex.labels.tolist() == [1, 0] and ex.text_b is None


def test_mrpc_with_bom_and_quotes(tmp_path):
    p = write(tmp_path / "MRPC" / "train.tsv",
              "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
              '1\t1\t2\tHe said " hi .\t" Hi , " he said .\n')
    ex = read_tsv(p, get_task("MRPC"))
    assert ex.text_a == ['He said " hi .'] and ex.text_b == ['" Hi , " he said .']
    assert ex.labels.tolist() == [1]


def test_sst2_keeps_trailing_space_and_stsb_reads_floats(tmp_path):
    p = write(tmp_path / "s.tsv", "sentence\tlabel\nit 's fine . \t1\n")
    assert read_tsv(p, get_task("sst-2")).text_a == ["it 's fine . "]
    p = write(tmp_path / "b.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\t"
              "sentence1\tsentence2\tscore\n0\tg\tf\t2012\t1\tn\tn\tA man.\tA guy.\t4.750\n")
    ex = read_tsv(p, get_task("STS-B"))
    assert ex.labels.dtype == np.float32 and ex.labels.tolist() == [4.75]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sentence\tlabel\ngood\t1\nbad\n", r"x.tsv:3: expected at least 2 tab-separated columns"),
        ("sentence\tlabel\ngood\t7\n", r"x.tsv:2: label '7' is not one of \('0', '1'\)"),
        ("sentence\tlabel\n\ngood\t1\n", r"x.tsv:2: empty line"),
        ("text\tlabel\ngood\t1\n", r"x.tsv:1: header has no column 'sentence'"),
        (b"sentence\tlabel\ngood\t1\nb\xffd\t0\n", r"x.tsv:3: not valid UTF-8"),
        ("", r"x.tsv: empty file"),
    ],
)
def test_malformed_tsv_names_file_and_line(tmp_path, content, message):
    p = write(tmp_path / "x.tsv", content)
    with pytest.raises(GlueDataError, match=message):
        read_tsv(p, get_task("sst2"))


def test_cola_row_with_wrong_column_count(tmp_path):
    p = write(tmp_path / "c.tsv", "gj04\t1\t\tfine\ngj04\t1\tfine\n")
    with pytest.raises(GlueDataError, match=r"c.tsv:2: expected 4 tab-separated columns, got 3"):
        read_tsv(p, get_task("cola"))


def test_unknown_task_lists_the_tasks():
    with pytest.raises(GlueDataError, match="unknown task 'sst3'; GLUE tasks are cola, sst2"):
        get_task("sst3")
    assert len(TASKS) == 10 and {t.folder for t in TASKS.values()} == {
        "CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE", "WNLI"}


def test_data_dir_without_the_task_files_lists_what_was_expected(tmp_path):
    write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(GlueDataError, match=r"missing .*RTE/dev.tsv \(found in .*\['train.tsv'\]"):
        load_split("rte", "dev", data_dir=tmp_path)


def test_no_network_fails_fast_with_a_hint(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", refuse)
    monkeypatch.delenv("LORA_JAX_GLUE_DIR", raising=False)
    monkeypatch.setenv("LORA_JAX_CACHE", str(tmp_path))
    with pytest.raises(GlueDataError, match=r"could not download .*RTE.zip .*--data-dir or the "
                                            r"environment variable LORA_JAX_GLUE_DIR"):
        load_split("rte", "train")
    assert not list(tmp_path.rglob("*.tsv"))


def test_download_is_checksum_verified_and_unpacked(tmp_path, monkeypatch):
    import hashlib
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("WNLI/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\t1\n")
        z.writestr("WNLI/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tC.\tD.\t0\n")
    blob = buf.getvalue()

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(data_mod.urllib.request, "urlopen", lambda *a, **k: Response(blob))
    monkeypatch.delenv("LORA_JAX_GLUE_DIR", raising=False)
    monkeypatch.setenv("LORA_JAX_CACHE", str(tmp_path))
    url = "https://example.invalid/WNLI.zip"
    monkeypatch.setitem(data_mod.GLUE_ARCHIVES, "WNLI", (url, len(blob), "0" * 64))
    with pytest.raises(GlueDataError, match="is corrupt"):
        load_split("wnli", "train")
    assert not list(tmp_path.rglob("*.tsv"))
    monkeypatch.setitem(data_mod.GLUE_ARCHIVES, "WNLI",
                        (url, len(blob), hashlib.sha256(blob).hexdigest()))
    assert load_split("wnli", "dev").text_a == ["C."]
    assert (tmp_path / "glue" / "WNLI" / "train.tsv").is_file()


def test_train_limit_is_a_seeded_subsample(tmp_path):
    rows = "".join(f"s{i}\t{i % 2}\n" for i in range(100))
    write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\n" + rows)
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\nx\t0\n")
    a = load_split("sst2", "train", data_dir=tmp_path, limit=10, seed=1)
    b = load_split("sst2", "train", data_dir=tmp_path, limit=10, seed=1)
    c = load_split("sst2", "train", data_dir=tmp_path, limit=10, seed=2)
    assert a.text_a == b.text_a != c.text_a and len(a) == 10


def fake_encoded(lengths, seed=0):
    rng = np.random.default_rng(seed)
    ids = [(list(rng.integers(5, 50, n)), [0] * n) for n in lengths]
    return Encoded(ids, np.array(lengths), np.arange(len(lengths)) % 2, pad_id=0)


def test_buckets_bound_the_shapes_and_every_example_is_seen_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, 1000)
    data = fake_encoded(lengths)
    buckets = choose_buckets(lengths, 128)
    assert len(buckets) <= 5 and buckets[-1] >= lengths.max()
    assert all(b % 8 == 0 for b in buckets)
    batcher = Batcher(data, 32, buckets, shuffle=True, seed=0)
    for epoch in range(2):
        seen, shapes = [], set()
        for batch in batcher.epoch(epoch):
            shapes.add(batch["input_ids"].shape)
            real = batch["index"] >= 0
            seen += batch["index"][real].tolist()
            assert (batch["weight"] == real).all()
            lens = batch["attention_mask"].sum(1)
            np.testing.assert_array_equal(lens[real], lengths[batch["index"][real]])
        assert sorted(seen) == list(range(1000))
        assert len(shapes) <= len(buckets)
    assert [b["index"].tolist() for b in batcher.epoch(0)] != \
        [b["index"].tolist() for b in batcher.epoch(1)]  # reshuffled per epoch
    again = Batcher(data, 32, buckets, shuffle=True, seed=0)
    assert [b["index"].tolist() for b in again.epoch(1)] == \
        [b["index"].tolist() for b in batcher.epoch(1)]  # deterministic given the seed


@pytest.mark.skipif(not REAL, reason="LORA_JAX_GLUE_DIR is not set (CI sets it)")
@pytest.mark.parametrize(
    ("task", "train", "dev", "counts"),
    [("cola", 8551, 1043, [322, 721]), ("sst2", 67349, 872, [428, 444]),
     ("mrpc", 3668, 408, [129, 279]), ("rte", 2490, 277, [146, 131]),
     ("stsb", 5749, 1500, None)],
)
def test_real_glue_files(task, train, dev, counts):
    tr, dv = load_split(task, "train"), load_split(task, "dev")
    assert (len(tr), len(dv)) == (train, dev)
    if counts:
        assert np.bincount(dv.labels).tolist() == counts
    else:
        assert 0.0 <= dv.labels.min() and dv.labels.max() <= 5.0
    assert (tr.text_b is None) == (task in ("cola", "sst2"))
    assert all(tr.text_a[:100])
