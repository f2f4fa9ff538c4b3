"""The speed history `python -m dss.bench star --record FILE` keeps: its format, not its numbers."""

import json

import pytest

from dss import bench


def _result(**changes):
    """A bench_star result as `star_record` reads it (made up: nothing is timed here)."""
    return {"examples": 32, "prefixes": 612, "guard": "cpu", "dtype": "float32", "repeats": 3, "device": "cpu",
            "speedup": 4.4, "speedup_per_repeat": [4.1, 4.4, 4.3], "speedup_vs_hf_torch_naive": 2.8,
            "speedup_vs_hf_torch_naive_per_repeat": [2.6, 2.9, 2.8], "token_bound_reached": 0.79, **changes}


def test_the_repos_history_is_well_formed():
    records = bench.read_history(bench.HISTORY)
    assert records, f"{bench.HISTORY} has no record"
    assert all(r["workload"]["guard"] == "cpu" for r in records)


def test_a_record_appends_one_checked_line(tmp_path):
    path = tmp_path / "history.jsonl"
    for result in (_result(), _result(speedup=5.0, speedup_per_repeat=[4.9, 5.0, 5.0])):
        bench.append_record(path, bench.star_record(result))
    first, second = bench.read_history(path)
    assert first["ratios"] == {"shared_kv_vs_naive": 4.4, "shared_kv_vs_hf_torch_naive": 2.8}
    assert first["spread"] == {"shared_kv_vs_naive": [4.1, 4.4], "shared_kv_vs_hf_torch_naive": [2.6, 2.9]}
    assert second["ratios"]["shared_kv_vs_naive"] == 5.0 and first["commit"] == second["commit"]
    assert first["workload"] == {"examples": 32, "prefixes": 612, "guard": "cpu", "dtype": "float32", "repeats": 3}


def test_without_torch_only_the_naive_ratio_is_kept(tmp_path):
    result = {k: v for k, v in _result().items() if "hf_torch" not in k}
    record = bench.star_record(result)
    assert set(record["ratios"]) == set(record["spread"]) == {"shared_kv_vs_naive"}


@pytest.mark.parametrize("change,message", [
    (dict(commit=""), "'commit' must be a commit hash"),
    (dict(date="2026-01-31 12:00"), "'date' must be UTC"),
    (dict(ratios={"shared_kv_vs_naive": -1.0}), "'ratios' must map"),
    (dict(ratios={"speedup": 4.0}), "'ratios' must map"),
    (dict(spread={"shared_kv_vs_naive": [5.0, 4.0], "shared_kv_vs_hf_torch_naive": [2.6, 2.9]}), "'spread' must give"),
    (dict(workload={"examples": 32}), "'workload' must give"),
    (dict(seconds=9.1), "keys must be"),
])
def test_a_bad_record_is_refused(tmp_path, change, message):
    record = {**bench.star_record(_result()), **change}
    with pytest.raises(ValueError, match=message):
        bench.check_record(record)
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(bench.star_record(_result())) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=rf"history.jsonl line 2: {message}"):
        bench.read_history(path)


def test_a_line_that_is_not_json_is_named(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"history.jsonl line 1: not JSON"):
        bench.read_history(path)
