import json
import subprocess
import sys

from ricardo.predictor.datasets import write_rows

from .synthetic import requests

REQUIRED = {
    "mae",
    "baselines",
    "p90_coverage",
    "predict_us_p99",
    "count_input_tokens_us_p99",
    "count_and_predict_us_p99",
    "n_train",
    "n_test",
}
BASELINES = {"global_mean", "melange_bucket_mean", "aibrix_bucket_histogram", "1.5x_input"}


def rows(n: int, seed: int, as_messages: bool) -> list[dict]:
    out = []
    for body, actual in requests(n, seed):
        if as_messages:
            out.append({"messages": body["messages"], "output_tokens": actual, "model": "m", "max_tokens": 400})
        else:
            out.append({"prompt": body["messages"][0]["content"], "output_tokens": actual})
    return out


def run_eval(train, test, *extra: str) -> dict:
    command = [sys.executable, "-c", "from ricardo.cli import main; raise SystemExit(main())", "predictor", "eval"]
    result = subprocess.run(
        [*command, "--train", str(train), "--test", str(test), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_eval_prints_one_json_object_with_the_scores(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_rows(train, rows(300, seed=10, as_messages=False) + rows(100, seed=11, as_messages=True))
    write_rows(test, rows(80, seed=12, as_messages=True) + rows(40, seed=13, as_messages=False))
    scores = run_eval(train, test)
    assert scores.keys() >= REQUIRED and scores["baselines"].keys() >= BASELINES
    assert (scores["n_train"], scores["n_test"]) == (400, 120)
    assert 0 <= scores["p90_coverage"] <= 1 and 0 < scores["predict_us_p99"] < scores["count_and_predict_us_p99"]
    assert 0 < scores["predict_fastest_of_5_us_p99"] <= scores["predict_us_p99"]  # the p99 of per-request minimums
    # the keyword decides the length here, so the text model must beat every length-only baseline
    assert scores["mae"] < min(scores["baselines"].values())
    assert scores["cold_start"]["n"] == scores["cold_start_lengths_only"]["n"] == 120 - 50


def test_eval_reports_the_cold_start_of_a_more_verbose_model(tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_rows(train, rows(300, seed=14, as_messages=False))
    write_rows(test, rows(300, seed=15, as_messages=False))
    scores = run_eval(train, test, "--output-scale", "5")
    cold = scores["cold_start"]
    print(
        f"\noutputs x5, from outcome 50 on: blend {cold['mae']:.1f}, text model {cold['mae_text_model']:.1f}, "
        f"running median {cold['mae_running_median']:.1f}; p90 coverage {cold['p90_coverage']:.3f}"
    )
    assert scores["output_scale"] == 5 and cold["n"] == 250
    assert cold["mae"] < 0.5 * cold["mae_text_model"] and cold["mae"] < cold["mae_running_median"]
