"""Bad arguments to `ricardo plan`, `simulate`, `profile` and `admin` end in one line on stderr and a non-zero exit,
never a traceback (run in-process: `main` returns the exit code)."""

from pathlib import Path

import pytest
from ricardo.cli import main


def one_line_error(capsys, args: list[str], code: int, words: str) -> None:
    assert main(args) == code
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and words in stderr, stderr


@pytest.mark.parametrize("price", ["A10G=nan", "A10G=inf"])
def test_plan_refuses_a_price_that_is_not_a_finite_number(capsys, price):
    one_line_error(capsys, ["plan", "--workload", "arena", "--rate", "4", "--price", price], 2, price)


@pytest.mark.parametrize("link", ["0", "-1", "nan"])
def test_simulate_refuses_a_link_that_is_not_positive(capsys, link):
    fleet = "A10G>L4:prefill=1,A10G>L4:decode=1"
    args = ["simulate", "--trace", "azure-conv", "--max-requests", "3", "--fleet", fleet, "--link-gbps", link]
    one_line_error(capsys, args, 2, "--link-gbps")


@pytest.mark.parametrize("content", ["[]", '{"profile_run": null}'])
def test_profile_refuses_an_out_file_that_is_json_but_not_a_profile(tmp_path: Path, capsys, content):
    out = tmp_path / "profile.json"
    out.write_text(content)
    args = ["profile", "--url", "http://127.0.0.1:9", "--model", "m", "--hardware", "X", "--out", str(out)]
    one_line_error(capsys, args, 2, str(out))


@pytest.mark.parametrize(
    "path, url",
    [
        ("admin/pools", "http://127.0.0.1:9"),  # the leading slash forgotten
        ("/admin/pools", "http://127.0.0.1:abc"),
        ("/admin/pools", "http://127.0.0.1:99999"),
    ],
)
def test_admin_refuses_a_url_it_cannot_call(capsys, path, url):
    one_line_error(capsys, ["admin", "GET", path, "--url", url, "--token", "t"], 2, "ricardo admin:")


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "nope.jsonl"),  # no such file
        ('{"prompt": "hi"}\n{"prompt": "ho"}\n', "output_tokens"),  # a row without its length
        ('{"prompt": "hi", "output_tokens": 5}\n', "2 rows"),  # too few rows to fit a model
        ("not json\n", "rows.jsonl"),
    ],
)
def test_predictor_eval_refuses_rows_it_cannot_use(tmp_path: Path, capsys, content, words):
    path = tmp_path / ("nope.jsonl" if content is None else "rows.jsonl")
    if content is not None:
        path.write_text(content)
    one_line_error(capsys, ["predictor", "eval", "--train", str(path), "--test", str(path)], 2, words)


@pytest.mark.parametrize("content", ["[1]", '"A10G"', '{"A10G": 1.7}', '{"A10G": true}'])
def test_simulate_refuses_a_fleet_file_that_is_not_counts_by_type(tmp_path: Path, capsys, content):
    fleet = tmp_path / "fleet.json"
    fleet.write_text(content)
    args = ["simulate", "--trace", "azure-conv", "--max-requests", "3", "--fleet", str(fleet)]
    one_line_error(capsys, args, 2, "--fleet")


@pytest.mark.parametrize("option", ["--speed", "--timeout", "--drain-timeout", "--slo-ttft-ms"])
def test_loadgen_refuses_nan_for_a_number_option(tmp_path: Path, capsys, option):
    """NaN passes `value <= 0`: with --speed or --drain-timeout nan the run ended at once, every request an error,
    exit 0, and summary.json held NaN (not JSON)."""
    args = ["loadgen", "--url", "http://127.0.0.1:9", "--trace", "azure-conv", "--out", str(tmp_path / "out")]
    one_line_error(capsys, [*args, option, "nan"], 2, option)


def test_simulate_refuses_a_speed_that_is_not_a_number(capsys):
    """With --speed nan every arrival was NaN: 0% SLO attainment reported as a result."""
    args = ["simulate", "--trace", "azure-conv", "--max-requests", "3", "--fleet", "A10G=1", "--speed", "nan"]
    one_line_error(capsys, args, 2, "speed")


@pytest.mark.parametrize("option, value", [("--speed", "nan"), ("--start-rate", "nan"), ("--slo-tpot-ms", "-1")])
def test_profile_refuses_a_number_option_out_of_range(tmp_path: Path, capsys, option, value):
    args = ["profile", "--url", "http://127.0.0.1:9", "--model", "m", "--hardware", "X", "--out", str(tmp_path / "p")]
    one_line_error(capsys, [*args, option, value], 2, option)


def test_plan_refuses_a_link_that_is_not_a_number(capsys):
    """--link-gbps nan passed the '<= 0' check and the plan came out without any pair, as if none could pay."""
    args = ["plan", "--workload", "azure-conv", "--disaggregated", "--link-gbps", "nan"]
    one_line_error(capsys, args, 2, "--link-gbps")


def test_plan_refuses_a_profile_file_that_is_not_text(tmp_path: Path, capsys):
    profile = tmp_path / "profile.json"
    profile.write_bytes(b"\xff\xfe\x00{")
    assert main(["plan", "--workload", "azure-conv", "--profile", str(profile)]) == 2
    assert "profile.json" in capsys.readouterr().err


@pytest.mark.parametrize("url, port", [("https://127.0.0.1", 443), ("http://127.0.0.1", 80)])
def test_admin_looks_for_the_token_generated_for_the_urls_default_port(capsys, monkeypatch, url, port):
    monkeypatch.delenv("RICARDO_ADMIN_TOKEN", raising=False)
    monkeypatch.setattr("ricardo.gateway.security.read_admin_token", lambda at: None)
    one_line_error(capsys, ["admin", "GET", "/admin/pools", "--url", url], 2, f"none generated for port {port}")


def test_simulate_refuses_a_negative_max_requests(capsys):
    """--max-requests -1 simulated the whole trace but its last request (19,365 of azure-conv's 19,366)."""
    args = ["simulate", "--trace", "azure-conv", "--duration", "30", "--fleet", "A10G=1", "--max-requests", "-1"]
    one_line_error(capsys, args, 2, "max")


@pytest.mark.parametrize("fleet", ["cheapest", "auto"])
def test_simulate_refuses_types_that_name_no_type(capsys, fleet):
    """--types , named no type: --fleet cheapest ended in a numpy traceback (stack of no arrays)."""
    args = ["simulate", "--trace", "azure-conv", "--max-requests", "3", "--fleet", fleet, "--types", ","]
    one_line_error(capsys, args, 2, "--types")


def test_simulate_refuses_types_beside_a_fleet_it_names(capsys):
    """--types chooses what --fleet auto or cheapest plans over; a named fleet has its types already."""
    args = ["simulate", "--trace", "azure-conv", "--max-requests", "3", "--fleet", "A10G=1", "--types", "L4"]
    one_line_error(capsys, args, 2, "--types")


@pytest.mark.parametrize("rate", ["nan", "inf"])
def test_simulate_refuses_a_rate_that_is_not_a_finite_number(tmp_path: Path, capsys, rate):
    """--rate nan passed `rate <= 0`: every arrival NaN, reported as "the selected window of the trace is empty";
    --rate inf sent every request at 0 s, a run of no duration priced at $0 per 1M tokens."""
    trace = tmp_path / "lengths.csv"
    trace.write_text("10,20\n30,40\n50,60\n")
    args = ["simulate", "--trace", str(trace), "--fleet", "A10G=1", "--rate", rate]
    one_line_error(capsys, args, 2, "rate")


def test_plan_refuses_an_infinite_rate_in_one_line(capsys):
    """--rate inf passed `rate < 0` and numpy's RuntimeWarning (inf x 0) came out on stderr before the error."""
    one_line_error(capsys, ["plan", "--workload", "arena", "--rate", "inf"], 2, "--rate")


@pytest.mark.parametrize("command", ["simulate", "loadgen"])
def test_an_infinite_speed_is_refused(tmp_path: Path, capsys, command):
    """--speed inf passed `speed > 0` and put every arrival at 0 s: simulate priced the run over 1e-9 s, at
    $0.0000000003 per 1M tokens, and loadgen sent the whole window at once."""
    args = [command, "--trace", "azure-conv", "--max-requests", "20", "--speed", "inf"]
    if command == "loadgen":
        args += ["--url", "http://127.0.0.1:9", "--out", str(tmp_path / "out")]
    else:
        args += ["--fleet", "A10G=1"]
    one_line_error(capsys, args, 2, "speed")
