import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from ricardo.cli import plan as plan_cli
from ricardo.policies.planner import plan
from ricardo.profiles.catalog import load_default_book

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def ricardo_plan(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ricardo")
    plan_cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(["plan", *argv])
    return args.func(args)


def plan_json(capsys, *argv: str) -> dict:
    assert ricardo_plan(*argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def book():
    return load_default_book()


def test_arena_plan_matches_the_planner(capsys, book):
    out = plan_json(capsys, "--workload", "arena", "--rate", "16")
    expected = plan(book.workload("arena") * 16, book)
    assert out["allocation"] == expected.allocation
    assert out["cost_per_hour"] == pytest.approx(expected.cost_per_hour)
    assert out["optimal"] is True and out["rate"] == 16
    assert set(out["single_type"]) == set(book.hardware_names())
    assert all(v["cost_per_hour"] >= out["cost_per_hour"] for v in out["single_type"].values())
    assert set(out["assignment"]) == {hw for hw, n in out["allocation"].items() if n}


def test_only_price_set_price_and_headroom(capsys, book):
    out = plan_json(capsys, "--workload", "arena", "--rate", "8", "--only", "A10G")
    assert list(out["allocation"]) == ["A10G"]
    neo = plan_json(capsys, "--workload", "arena", "--rate", "8", "--price-set", "neocloud")
    assert neo["prices"] == load_default_book(price_set="neocloud").prices
    override = plan_json(capsys, "--workload", "arena", "--rate", "8", "--price", "H100-SXM=0.1")
    assert override["prices"]["H100"] == 0.1 and override["allocation"]["H100"] > 0
    spare = plan_json(capsys, "--workload", "arena", "--rate", "8", "--headroom", "0.3", "--slice-factor", "4")
    assert spare["headroom"] == 0.3 and spare["slice_factor"] == 4
    assert all(spare["load"][hw] <= 0.7 * n + 1e-6 for hw, n in spare["allocation"].items())


def test_profile_in_the_melange_format(capsys):
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not beside the repo")
    out = plan_json(
        capsys, "--profile", str(SHARED / "profiles" / "melange_llama2_7b.json"), "--workload", "arena", "--rate", "4"
    )
    assert out["cost_per_hour"] > 0 and out["profiles"][0].endswith("melange_llama2_7b.json")


def test_histogram_file(tmp_path, capsys, book):
    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"fraction": [[2, 0], [0, 2]]}))  # normalised: half (0,0), half (1,1)
    out = plan_json(capsys, "--workload", str(path), "--rate", "10")
    rates = np.zeros((2, 2))
    rates[0, 0] = rates[1, 1] = 5.0
    assert out["cost_per_hour"] == pytest.approx(plan(rates, book).cost_per_hour)


def test_length_csvs_without_timestamps_need_a_rate(tmp_path, capsys, book):
    two_columns = tmp_path / "lengths.csv"
    two_columns.write_text("10,20\n300,400\n10,20\n3000,30\n")
    sharegpt = tmp_path / "sharegpt.csv"
    sharegpt.write_text(
        "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n"
        "10,20,30,0.5\n300,400,700,0.75\n10,20,30,0.5\n3000,30,3030,100\n"
    )
    expected = plan(book.histogram([10, 300, 10, 3000], [20, 400, 20, 30]) * 2, book)
    for path in (two_columns, sharegpt):
        out = plan_json(capsys, "--workload", str(path), "--rate", "2")
        assert out["allocation"] == expected.allocation and "4 requests" in out["workload"]
        assert ricardo_plan("--workload", str(path)) == 2
        assert "--rate is needed" in capsys.readouterr().err


def test_timestamped_traces_default_to_their_mean_rate(tmp_path, capsys):
    azure = tmp_path / "azure.csv"
    azure.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.000,374,44\n2023-11-16 18:15:48.000,30,300\n2023-11-16 18:15:50.000,900,9\n"
    )
    assert plan_json(capsys, "--workload", str(azure))["rate"] == pytest.approx(0.5)  # 2 gaps in 4 s
    aibrix = tmp_path / "aibrix.jsonl"
    aibrix.write_text(
        '{"timestamp": 0, "requests": [{"Prompt Length": 10, "Output Length": 5}]}\n'
        '{"timestamp": 500, "requests": [{"Prompt Length": 300, "Output Length": 50},'
        ' {"Prompt Length": 20, "Output Length": 500}]}\n'
    )
    out = plan_json(capsys, "--workload", str(aibrix))
    assert out["rate"] == pytest.approx(4.0) and "3 requests" in out["workload"]  # 2 gaps in 0.5 s
    assert plan_json(capsys, "--workload", str(aibrix), "--rate", "1")["rate"] == 1


def test_unservable_sizes_are_an_error_unless_dropped(tmp_path, capsys):
    path = tmp_path / "long.csv"
    path.write_text("10,20\n3000,1500\n")  # L4 and A10G were not profiled past 2,000 prompt tokens
    assert ricardo_plan("--workload", str(path), "--rate", "1", "--only", "L4,A10G") == 2
    assert "no candidate type" in capsys.readouterr().err
    out = plan_json(capsys, "--workload", str(path), "--rate", "1", "--only", "L4,A10G", "--drop-unservable")
    assert out["unserved_rate"] == pytest.approx(0.5)
    assert out["single_type"]["L4"] is not None  # compared on what the mixed fleet serves


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--workload", "nope", "--rate", "1"], "neither a file nor a known name"),
        (["--workload", "arena", "--rate", "1", "--only", "B200"], "unknown hardware"),
        (["--workload", "arena", "--rate", "1", "--price", "A10G"], "TYPE=USD"),
        (["--workload", "arena", "--rate", "1", "--price", "B200=1"], "no profile for hardware"),
        (["--workload", "arena", "--rate", "-1"], "--rate must be >= 0"),
        (["--workload", "arena", "--rate", "1", "--price-set", "nope"], "unknown price set"),
        (["--workload", "arena", "--rate", "1", "--profile", "/nonexistent.json"], "No such file"),
        (["--workload", "arena", "--rate", "1", "--profile", "x.json", "--include-estimated"], "--include-estimated"),
    ],
)
def test_bad_input_is_a_clear_error(capsys, argv, message):
    assert ricardo_plan(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ricardo plan: error:") and message in err


def test_bad_workload_files(tmp_path, capsys):
    cases = {
        "bad.json": "[[0.5, -1]]",
        "wide.json": json.dumps([[0.1] * 7]),
        "bad.csv": "a,b\nx,y\n",
        "three.csv": "1,2,3\n4,5,6\n",
        "trace.txt": "1,2\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        assert ricardo_plan("--workload", str(tmp_path / name), "--rate", "1") == 2, name
        assert "ricardo plan: error:" in capsys.readouterr().err


def test_text_output(capsys):
    assert ricardo_plan("--workload", "arena", "--rate", "4") == 0
    text = capsys.readouterr().out
    assert "mixed fleet:" in text and "A10G-only:" in text and "optimal" in text


def test_planners_charge_each_request_its_own_size_or_its_buckets_edge(capsys, book):
    edges = plan_json(capsys, "--workload", "azure-conv", "--planner", "melange")
    exact = plan_json(capsys, "--workload", "azure-conv", "--planner", "exact")
    router_aware = plan_json(capsys, "--workload", "azure-conv")  # the default with a trace
    assert (
        router_aware["planner"] == "ricardo"
        and plan_json(capsys, "--workload", "arena", "--rate", "4")["planner"] == "melange"
    )
    # the router keeps each type below its operating point: the fleet it plans for is at least the bound's
    assert router_aware["cost_per_hour"] >= exact["cost_per_hour"]
    assert exact["sizes"].startswith("exact") and edges["sizes"] == "bucket upper edges"
    assert exact["cost_per_hour"] < edges["cost_per_hour"]  # every request is at most its bucket's upper edge
    assert exact["load"]["A100-80GB"] <= edges["load"]["A100-80GB"] or exact["allocation"] != edges["allocation"]
    assert ricardo_plan("--workload", "arena", "--rate", "4", "--planner", "exact") == 2
    assert "needs a trace" in capsys.readouterr().err
