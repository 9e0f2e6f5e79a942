"""BEIR-style folder readers and the BM25 index, on tiny folders written in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bge_rerank_plugins.beir import (
    Bm25Index,
    CandidateList,
    Document,
    available_splits,
    bm25_tokenize,
    load_beir,
    load_candidates,
    load_corpus,
    load_qrels,
    write_beir,
)
from bge_rerank_plugins.fields import PassageTemplate

CORPUS = {
    "d1": {"title": "Pandas", "text": "The giant panda is a bear native to China.", "author": "A"},
    "d2": {"title": "Python", "text": "pandas is a data analysis library for Python."},
    "d3": {"title": "", "text": "Bamboo is the main food of the giant panda."},
    "d4": {"title": "Koalas", "text": "Koalas eat eucalyptus leaves in Australia."},
}
QUERIES = {"q1": "what does the giant panda eat", "q2": "python data library", "q3": "koala"}


def _folder(tmp_path: Path, candidates: bool = True) -> Path:
    return write_beir(
        tmp_path / "tiny",
        corpus=CORPUS,
        queries=QUERIES,
        qrels={
            "dev": {"q1": {"d3": 2, "d1": 1}, "q2": {"d2": 1}},
            "test": {"q3": {"d4": 1}},
        },
        candidates={
            "dev": [
                {"qid": "q1", "pos": ["d3"], "neg": ["d2"], "ranked": ["d1", "d3", "d2"]},
                {"qid": "q2", "pos": ["d2"], "neg": ["d1"], "scores": {"d2": 1, "d1": 0}},
            ]
        }
        if candidates
        else None,
    )


def test_load_beir_reads_every_file(tmp_path):
    ds = load_beir(_folder(tmp_path), "dev")
    assert ds.split == "dev"
    assert ds.query_ids == ["q1", "q2"]
    assert set(ds.queries) == {"q1", "q2"}  # only the split's queries
    assert ds.qrels == {"q1": {"d3": 2, "d1": 1}, "q2": {"d2": 1}}
    assert isinstance(ds.qrels["q1"]["d3"], int)
    doc = ds.corpus["d1"]
    assert doc == Document("d1", "Pandas", CORPUS["d1"]["text"], {"author": "A"})
    assert PassageTemplate("{title} ({author}): {text}").render(doc).startswith("Pandas (A): The")
    assert ds.relevant("q1") == {"d1", "d3"}
    assert ds.relevant("q1", threshold=2) == {"d3"}
    assert ds.candidates["q1"].ids == ("d1", "d3", "d2")
    # judged list without "ranked": positives, then negatives
    assert ds.candidates["q2"].ranked is None
    assert ds.candidates["q2"].ids == ("d2", "d1")
    assert ds.candidates["q2"].scores == {"d2": 1, "d1": 0}
    assert available_splits(ds.path) == ["dev", "test"]


def test_load_beir_without_candidates(tmp_path):
    ds = load_beir(_folder(tmp_path, candidates=False), "test")
    assert ds.candidates is None
    assert ds.query_ids == ["q3"]


def test_unknown_split_lists_the_available_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'train'.*available splits: \['dev', 'test'\]"):
        load_beir(_folder(tmp_path), "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_beir(tmp_path / "nope", "dev")


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_corpus_errors_name_file_line_and_field(tmp_path):
    good = json.dumps({"_id": "a", "title": "t", "text": "x"})
    path = _write(tmp_path / "corpus.jsonl", [good, "", json.dumps({"_id": "b", "title": "t"})])
    with pytest.raises(ValueError, match=r"corpus\.jsonl:3: missing field 'text'"):
        load_corpus(path)
    _write(path, [good, "{not json"])
    with pytest.raises(ValueError, match=r"corpus\.jsonl:2: invalid JSON"):
        load_corpus(path)
    _write(path, [good, json.dumps({"_id": "c", "text": 5})])
    with pytest.raises(ValueError, match=r"corpus\.jsonl:2: field 'text' must be str, got int"):
        load_corpus(path)
    _write(path, [good, good])
    with pytest.raises(ValueError, match=r"corpus\.jsonl:2: duplicate document id 'a'"):
        load_corpus(path)
    _write(path, [good, "[1, 2]"])
    with pytest.raises(ValueError, match=r"corpus\.jsonl:2: expected a JSON object"):
        load_corpus(path)


def test_corpus_null_title_and_int_ids(tmp_path):
    path = _write(tmp_path / "corpus.jsonl", [json.dumps({"_id": 7, "title": None, "text": "x"})])
    assert load_corpus(path) == {"7": Document("7", "", "x", {})}


def test_qrels_errors_and_grades(tmp_path):
    path = _write(tmp_path / "dev.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t2", "q1\td2\t0.5"])
    assert load_qrels(path) == {"q1": {"d1": 2, "d2": 0.5}}
    _write(path, ["q1\td1\t1", "q1\td2"])  # no header is fine; a short row is not
    with pytest.raises(ValueError, match=r"dev\.tsv:2: expected 3 tab-separated columns"):
        load_qrels(path)
    _write(path, ["query-id\tcorpus-id\tscore", "q1\td1\thigh"])
    with pytest.raises(ValueError, match=r"dev\.tsv:2: column 'score' must be a number"):
        load_qrels(path)
    _write(path, ["q1\t\t1"])
    with pytest.raises(ValueError, match=r"dev\.tsv:1: column 'corpus-id' is empty"):
        load_qrels(path)


def test_candidates_errors(tmp_path):
    path = _write(tmp_path / "dev.jsonl", [json.dumps({"qid": "q1", "pos": "d1"})])
    with pytest.raises(ValueError, match=r"dev\.jsonl:1: field 'pos' must be list, got str"):
        load_candidates(path)
    _write(path, [json.dumps({"pos": ["d1"]})])
    with pytest.raises(ValueError, match=r"dev\.jsonl:1: missing field 'qid'"):
        load_candidates(path)
    _write(path, [json.dumps({"qid": "q", "pos": ["d1", 3.5]})])
    with pytest.raises(ValueError, match=r"field 'pos'\[1\] must be a document id"):
        load_candidates(path)
    _write(path, [json.dumps({"qid": "q", "pos": ["d1"], "scores": {"d1": "x"}})])
    with pytest.raises(ValueError, match=r"field 'scores'\['d1'\] must be a number"):
        load_candidates(path)
    _write(path, [json.dumps({"qid": "q", "pos": [], "neg": []})])
    with pytest.raises(ValueError, match="has no candidates"):
        load_candidates(path)


def test_candidate_not_in_corpus_is_an_error(tmp_path):
    folder = _folder(tmp_path)
    _write(folder / "candidates" / "dev.jsonl", [json.dumps({"qid": "q1", "ranked": ["d1", "d9"]})])
    with pytest.raises(ValueError, match=r"candidate 'd9', which is not in corpus\.jsonl"):
        load_beir(folder, "dev")


def test_qrels_query_missing_from_queries_is_an_error(tmp_path):
    folder = _folder(tmp_path)
    _write(folder / "qrels" / "dev.tsv", ["query-id\tcorpus-id\tscore", "q9\td1\t1"])
    with pytest.raises(ValueError, match=r"no entry in queries\.jsonl \(first: 'q9'\)"):
        load_beir(folder, "dev")


def test_candidate_list_ids_deduplicate():
    assert CandidateList("q", ("a", "b"), ("b", "c")).ids == ("a", "b", "c")


def test_bm25_tokenize_latin_and_cjk():
    assert bm25_tokenize("The Giant-Panda, a bear!") == ["the", "giant", "panda", "bear"]
    assert bm25_tokenize("the panda", stopwords={"the"}) == ["panda"]
    assert bm25_tokenize("头痛 x2") == ["头", "痛", "x2", "头痛"]


def test_bm25_index_search_and_rerank(tmp_path):
    ds = load_beir(_folder(tmp_path), "dev")
    index = Bm25Index.from_corpus(ds.corpus)
    hits = index.search("giant panda bamboo", k=3)
    assert hits[0][0] == "d3"  # the only document with all three terms
    assert {d for d, _ in hits} == {"d1", "d3"}  # documents without a shared term are dropped
    assert hits[0][1] > hits[1][1] > 0
    assert index.rerank("koala eucalyptus", ["d1", "d4", "d2"]) == ["d4", "d1", "d2"]
    assert index.search("zzz unknown", k=2) == []
    assert index.search("the a", k=2) == []  # stopwords only
    with pytest.raises(KeyError, match="d9"):
        index.rerank("x", ["d9"])


def test_bm25_chinese(tmp_path):
    index = Bm25Index(["a", "b"], ["头痛怎么办", "感冒发烧吃什么药"])
    assert index.search("头痛", k=1)[0][0] == "a"
    assert index.search("发烧", k=1)[0][0] == "b"
