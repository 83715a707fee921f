"""Data sources: file types, errors with file/row/column, mixtures, column mapping."""

from __future__ import annotations

import json

import pytest

from align.data.sources import check_columns, mix, read_local, rename_columns, take
from align.data.world import WorldConfig, build_world, make_splits
from align.errors import DataError


def test_reads_every_local_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": "a"}, {"text": "b"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps({"train": rows}))
    (tmp_path / "d.csv").write_text("text\na\nb\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for suffix in ("jsonl", "json", "csv", "parquet"):
        assert read_local(tmp_path / f"d.{suffix}") == rows, suffix


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, row 3: invalid JSON"):
        read_local(path)


def test_missing_and_empty_and_unsupported(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_local(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty.jsonl: the dataset is empty"):
        read_local(tmp_path / "empty.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        read_local(tmp_path / "x.txt")


def test_missing_column_names_row_and_column():
    rows = [{"question": "q", "answers": ["a"]}, {"question": "q2"}]
    with pytest.raises(DataError, match=r"qa.jsonl, row 2, column 'answers': missing column"):
        check_columns(rows, {"question", "answers"}, "qa.jsonl")


def test_column_mapping_renames_and_reports_unknown_columns():
    rows = [{"body": "x"}]
    assert rename_columns(rows, {"body": "text"}, "f") == [{"text": "x"}]
    with pytest.raises(DataError, match=r"columns \['content'\].*it has \['body'\]"):
        rename_columns(rows, {"content": "text"}, "f")


def test_mixture_weights_and_max_samples():
    a = [{"i": i} for i in range(10)]
    assert len(take(a, 2.0, None, 0)) == 20
    half = take(a, 0.5, None, 0)
    assert len(half) == 5 and half == take(a, 0.5, None, 0)  # seeded
    assert take(a, 1.0, 3, 0) == a[:3]
    mixed = mix([a, [{"j": 1}] * 5], seed=1)
    assert len(mixed) == 15 and mixed == mix([a, [{"j": 1}] * 5], seed=1)
    assert mixed[:10] != a  # shuffled


def test_world_is_deterministic_and_splits_are_disjoint():
    first = make_splits(build_world(WorldConfig(seed=3, n_entities=40, boundary="entity")))
    again = make_splits(build_world(WorldConfig(seed=3, n_entities=40, boundary="entity")))
    other = make_splits(build_world(WorldConfig(seed=4, n_entities=40, boundary="entity")))
    assert first == again and first != other
    train_q = {(r["entity"], r["attribute"]) for r in first["qa_train"]}
    eval_q = {(r["entity"], r["attribute"]) for r in first["qa_eval"]}
    assert not train_q & eval_q
    corpus = " ".join(r["text"] for r in first["corpus"])
    unknown_eval = {r["entity"] for r in first["qa_eval"] if not r["known"]}
    unknown_probe = {r["entity"] for r in first["qa_train"] if not r["known"]}
    assert unknown_eval and not unknown_eval & unknown_probe
    for entity in unknown_eval | unknown_probe:  # never seen in training text
        assert entity not in corpus
    known_eval = [r for r in first["qa_eval"] if r["known"]]
    assert known_eval and all(r["entity"] in corpus and r["answers"][0] in corpus for r in known_eval)
    sft_text = json.dumps(first["sft"])
    assert not any(r["question"] in sft_text for r in known_eval)


def test_max_rows_reads_no_further_than_it_needs(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n{broken\n')
    (tmp_path / "d.csv").write_text("text\na\nb\nc,d\n")
    for suffix in ("jsonl", "csv"):
        assert read_local(tmp_path / f"d.{suffix}", max_rows=2) == [{"text": "a"}, {"text": "b"}]
        with pytest.raises(DataError, match=f"d.{suffix}"):
            read_local(tmp_path / f"d.{suffix}")  # the whole file: its broken end is found
    (tmp_path / "d.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    assert read_local(tmp_path / "d.json", max_rows=1) == [{"text": "a"}]
