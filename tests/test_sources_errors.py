"""Malformed data files fail as `<file> line N: <reason>` (N as an editor counts), in training
sources and eval benchmarks alike."""

import pytest

import dss.data
from dss import files
from dss.eval import benchmarks, capability
from dss.eval.io import read_jsonl, read_rows

GOOD = '{"prompt": "a", "response": "b"}\n'


def _file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _message(fn, *args):
    with pytest.raises(ValueError) as err:
        fn(*args)
    return str(err.value)


JSONL = {  # content -> reason
    "syntax": (GOOD + "\n" + '{"prompt": "a" "response": "b"}\n' + GOOD,
               "line 3: not valid JSON: Expecting ',' delimiter (column 16)"),
    "not an object": (GOOD + "[1, 2]\n", "line 2: an array, not a JSON object (one object a line)"),
    "bytes": (GOOD.encode() + b'{"prompt": "\xff", "response": "b"}\n', "line 2: byte 0xff at column 13 is not UTF-8 text"),
    "crlf": (GOOD.replace("\n", "\r\n") * 2 + '{"prompt": }\r\n', "line 3: not valid JSON: Expecting value (column 12)"),
}


@pytest.mark.parametrize("kind", JSONL)
def test_a_malformed_jsonl_line_is_named(tmp_path, kind):
    content, reason = JSONL[kind]
    path = _file(tmp_path, "data.jsonl", content)
    assert _message(dss.data.load_examples, {"path": str(path)}) == f"{path} {reason}"
    assert _message(read_rows, path) == f"{path} {reason}"  # eval benchmarks read local files the same way


def test_a_malformed_json_file_is_named_by_line(tmp_path):
    path = _file(tmp_path, "data.json", '[\n  {"prompt": "a", "response": "b"},\n  {"prompt": "c", "response": }\n]\n')
    assert _message(dss.data.load_examples, {"path": str(path)}) == \
        f"{path} line 3: not valid JSON: Expecting value (column 31)"
    lines = _file(tmp_path, "lines.json", GOOD + '{"prompt": "c"\n')  # JSON lines in a .json file, as datasets reads
    assert _message(dss.data.load_examples, {"path": str(lines)}) == \
        f"{lines} line 2: not valid JSON: Expecting ',' delimiter (column 15)"
    assert [r["prompt"] for r in dss.data.load_examples({"path": str(_file(tmp_path, "ok.json", GOOD * 2))})] == ["a", "a"]
    scalar = _file(tmp_path, "one.json", '"just a string"')
    assert _message(dss.data.load_examples, {"path": str(scalar)}) == \
        f"{scalar}: expected a JSON list of objects, or one object a line"
    items = _file(tmp_path, "items.json", '[{"prompt": "a", "response": "b"}, [1]]')
    assert _message(dss.data.load_examples, {"path": str(items)}) == f"{items} line 1: a list, not an object with fields"


CSV = {
    "long row": ('prompt,response\na,b\nc,d,e\n', "line 3: 3 fields, but the first row has 2 fields"),
    "short row": ('prompt,response\r\na,b\r\nc\r\n', "line 3: 1 field, but the first row has 2 fields"),
    "after a multi-line cell": ('prompt,response\n"two\nlines",b\n\nc,d,e\n', "line 5: 3 fields, but the first row has 2 fields"),
    "open quote": ('prompt,response\na,b\n"never closed,b\nc,d\n', "line 3: bad quoting (unexpected end of data)"),
    "bytes": (b'prompt,response\na,b\n\xff,d\n', "line 3: byte 0xff at column 1 is not UTF-8 text"),
}


@pytest.mark.parametrize("kind", CSV)
def test_a_ragged_or_undecodable_csv_row_is_named(tmp_path, kind):
    content, reason = CSV[kind]
    path = _file(tmp_path, "data.csv", content)
    assert _message(dss.data.load_examples, {"path": str(path)}) == f"{path} {reason}"
    assert _message(read_rows, path) == f"{path} {reason}"


def test_csv_cells_stay_text_and_a_byte_order_mark_is_dropped(tmp_path):
    path = _file(tmp_path, "data.csv", b'\xef\xbb\xbfprompt,response\n007,"a, ""quoted"" b"\n\nx,42\n')
    rows = dss.data.load_examples({"path": str(path)})
    assert [(r["prompt"], r["response"], r["row"]) for r in rows] == [("007", 'a, "quoted" b', 0), ("x", "42", 1)]
    assert read_rows(path) == [{"prompt": "007", "response": 'a, "quoted" b'}, {"prompt": "x", "response": "42"}]


def test_benchmark_loaders_name_the_bad_line(tmp_path):
    advbench = _file(tmp_path, "harmful_behaviors.csv", "goal,target\nDo x,Sure\nDo y,Sure,extra\n")
    assert _message(benchmarks.advbench, str(advbench)) == f"{advbench} line 3: 3 fields, but the first row has 2 fields"
    hexphi = _file(tmp_path, "category_1.csv", b"How do I x?\n\xfe\n")  # headerless, one prompt a line
    assert _message(benchmarks.hexphi, str(hexphi)) == f"{hexphi} line 2: byte 0xfe at column 1 is not UTF-8 text"
    gsm8k = tmp_path / "gsm8k"
    gsm8k.mkdir()
    test = _file(gsm8k, "test.jsonl", '{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": }\n')
    assert _message(capability.load_gsm8k, str(gsm8k)) == f"{test} line 2: not valid JSON: Expecting value (column 32)"


def test_output_jsonl_errors_use_the_same_form(tmp_path):
    path = _file(tmp_path, "generations.jsonl", '{"id": 1}\n{"id": \n{"id": 3}\n')
    assert _message(read_jsonl, path) == f"{path} line 2: not valid JSON: Expecting value (column 8)"


def test_a_good_file_is_parsed_once(tmp_path, monkeypatch):
    calls = []
    real = files.read_json
    monkeypatch.setattr(files, "read_json", lambda *a, **k: calls.append(a) or real(*a, **k))
    path = _file(tmp_path, "data.jsonl", GOOD * 3)
    assert len(dss.data.load_examples({"path": str(path), "limit": 2})) == 2 and len(calls) == 1
