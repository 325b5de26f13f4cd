import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError
from ricardo.profiles.catalog import (
    DATA_DIR,
    GPU_CATALOG,
    PRICE_COLUMNS,
    ProfileBook,
    book_from_profiles,
    default_profile_paths,
    load_book,
    load_default_book,
    load_prices,
)
from ricardo.profiles.schema import ProfileFile, read_profile_file

SHARED_PROFILE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "profiles" / "melange_llama2_7b.json"
MELANGE = DATA_DIR / "melange_llama2_7b.json"


@pytest.fixture(scope="module")
def book() -> ProfileBook:
    return load_default_book()


@pytest.fixture
def melange_data() -> dict:
    return json.loads(MELANGE.read_text())


def test_shipped_book_is_the_measured_melange_profile(book, melange_data):
    assert book.hardware_names() == ["L4", "A10G", "A100-80GB", "H100"]
    assert book.model == "llama2-7b"
    assert book.slo_tpot_ms == 120
    assert book.shape == (10, 6)
    assert book.input_edges == tuple(melange_data["input_bucket_upper_edges"])
    assert all(book.source(hw) == "measured" for hw in book.hardware_names())
    for hw, table in melange_data["gpus"].items():
        for i, row in enumerate(table["max_rps"]):
            assert book.capacity(hw)[i, : len(row)].tolist() == row


def test_bucket_upper_edges_are_inclusive(book):
    assert book.bucket(25, 25) == (0, 0)
    assert book.bucket(26, 26) == (1, 1)
    assert book.bucket(0, 1) == (0, 0)
    assert book.max_rps("L4", 25, 25) == 25.14
    assert book.max_rps("L4", 26, 25) == 17.55
    assert book.max_rps("A10G", 2000, 2000) == 0.04


def test_sizes_beyond_the_last_edge_fall_in_the_last_bucket_if_the_hardware_has_it(book):
    assert book.bucket(100_000, 100_000) == (9, 5)
    assert book.max_rps("H100", 20_000, 100) == pytest.approx(1.186287414)  # last (ragged) row, column 1
    # the last row was measured to 250 output tokens only: longer answers follow the row's own trend
    assert 0 < book.max_rps("H100", 20_000, 600) < book.max_rps("H100", 20_000, 200) / 2
    assert book.max_rps("A100-80GB", 3000, 5000) == pytest.approx(0.148405185)  # row 6, last column
    assert book.max_rps("L4", 3000, 10) == 0.0  # L4 was not profiled past 2000 input tokens
    assert book.max_rps("A10G", 2001, 10) == 0.0


def test_catalog_names_are_aliases_of_profile_names(book):
    assert book.has("H100-SXM") and book.canonical("H100-SXM") == "H100"
    assert book.max_rps("H100-SXM", 300, 300) == book.max_rps("H100", 300, 300)
    assert book.price("H100-SXM") == book.price("H100") == 7.516
    assert not book.has("B200")
    with pytest.raises(KeyError, match="known: L4"):
        book.canonical("B200")


def test_melange_price_set_is_the_papers(book):
    assert book.prices == {"L4": 0.70, "A10G": 1.01, "A100-80GB": 3.67, "H100": 7.516}
    assert book.price_set == "melange"


@pytest.mark.parametrize("price_set", ["aws", "neocloud"])
def test_price_sets_read_their_gpus_csv_column(price_set):
    with open(GPU_CATALOG, newline="") as f:
        column = {row["gpu"]: row[PRICE_COLUMNS[price_set]] for row in csv.DictReader(f)}
    book = load_default_book(price_set=price_set)
    expected = {hw: column[hw] for hw in ("L4", "A10G", "A100-80GB")} | {"H100": column["H100-SXM"]}
    assert book.prices == {hw: float(v) for hw, v in expected.items()}
    assert load_prices(price_set)["L40S"] > 0  # the set covers catalog hardware beyond the profile's


def test_price_sets_named_in_the_profile_file_and_unknown_ones():
    assert load_default_book(price_set="notebook").price("H100") == 6.234
    with pytest.raises(ValueError, match="known: melange, aws, gcp, neocloud"):
        load_default_book(price_set="nope")


def test_missing_price_is_a_clear_error_and_overrides_replace_prices(book):
    gcp = load_default_book(price_set="gcp")
    with pytest.raises(ValueError, match="no price for A10G"):
        gcp.price("A10G")
    custom = book.with_prices(book.prices | {"H100-SXM": 2.5}, price_set="mine")
    assert custom.price("H100") == 2.5 and custom.price("L4") == 0.7 and custom.price_set == "mine"
    assert book.price("H100") == 7.516  # the original is untouched


def test_shared_melange_file_loads_like_the_shipped_copy(book):
    if not SHARED_PROFILE.is_file():
        pytest.skip("../shared/data is not beside the repo")
    shared = load_book(SHARED_PROFILE, model="llama2-7b")
    for hw in book.hardware_names():
        assert np.array_equal(shared.capacity(hw), book.capacity(hw))
    assert np.array_equal(shared.workload("arena"), book.workload("arena"))


def test_arena_workload_is_on_the_grid(book):
    arena = book.workload("arena")
    assert arena.shape == book.shape
    assert arena.sum() == pytest.approx(1.0, abs=1e-5)
    assert arena[6:].sum() == 0  # the paper's mix covers inputs up to 2000 tokens
    with pytest.raises(KeyError, match="known: arena"):
        book.workload("nope")


def test_histogram_counts_requests_in_their_buckets(book):
    h = book.histogram([10, 25, 26, 50_000], [10, 2000, 30, 3])
    assert h.sum() == pytest.approx(1.0)
    assert h[0, 0] == h[0, 5] == h[1, 1] == h[9, 0] == 0.25
    with pytest.raises(ValueError):
        book.histogram([1, 2], [3])


def _own_profile(**changes) -> dict:
    data = {
        "what": "test",
        "model": "llama2-7b",
        "slo_tpot_ms": 120,
        "slo_ttft_ms": 2000,
        "input_bucket_upper_edges": [25, 100, 250, 500, 1000, 2000, 4000, 8000, 12000, 16000],
        "output_bucket_upper_edges": [25, 100, 250, 500, 1000, 2000],
        "gpus": {
            "L40S": {"max_rps": [[30.0, 10.0], [20.0]], "source": "estimated", "note": "roofline"},
            "H100-SXM": {"max_rps": [[1.0]], "source": "estimated"},
        },
    }
    data.update(changes)
    return data


def test_project_format_in_yaml_and_merge_with_measured(tmp_path):
    path = tmp_path / "estimated.yaml"
    path.write_text(yaml.safe_dump(_own_profile()))
    own = read_profile_file(path)
    assert own.slo_ttft_ms == 2000 and own.gpus["L40S"].source == "estimated"
    book = load_book(MELANGE, path, price_set="neocloud")
    assert book.hardware_names() == ["L4", "A10G", "A100-80GB", "H100", "L40S"]
    assert book.source("L40S") == "estimated" and book.source("H100") == "measured"
    assert book.max_rps("H100", 10, 10) == pytest.approx(40.64087824)  # measured wins over the estimate
    assert book.max_rps("L40S", 50, 10) == 20.0 and book.max_rps("L40S", 300, 10) == 0.0  # a row not measured
    # a row measured to 100 output tokens only is extended by its trend, at least proportionally
    assert 0 < book.max_rps("L40S", 10, 200) <= 10.0 * 100 / 250
    assert book.price("L40S") == 0.79


def test_merge_refuses_another_grid_or_slo(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps(_own_profile(slo_tpot_ms=50)))
    with pytest.raises(ValueError, match="share bucket edges and SLO"):
        load_book(MELANGE, path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"input_bucket_upper_edges": [25, 25, 100]}, "increase strictly"),
        ({"output_bucket_upper_edges": [25]}, "columns but there are 1 output buckets"),
        ({"gpus": {"X": {"max_rps": [[-1.0]]}}}, "greater than or equal to 0"),
        ({"gpus": {"X": {"max_rps": [[1.0]], "source": "guessed"}}}, "measured"),
        ({"workloads": {"w": {"fraction": [[0.5, 0.4]]}}}, "not 1"),
        ({"slo_tpot_ms": 0}, "greater than 0"),
    ],
)
def test_schema_rejects_malformed_profiles(changes, message):
    with pytest.raises(ValidationError, match=message):
        ProfileFile.model_validate(_own_profile(**changes))


def test_estimated_shipped_profile_is_optional():
    estimated = DATA_DIR / "estimated_llama2_7b.json"
    if not estimated.is_file():
        with pytest.raises(FileNotFoundError):
            default_profile_paths(include_estimated=True)
        return
    book = load_default_book(include_estimated=True)
    assert {book.source(hw) for hw in book.hardware_names()} == {"measured", "estimated"}
    assert all(book.source(hw) == "measured" for hw in ("L4", "A10G", "A100-80GB", "H100"))


def test_book_from_profiles_takes_parsed_files():
    parsed = read_profile_file(MELANGE)
    assert book_from_profiles([parsed], model="m").model == "m"


def test_lookup_is_cheap(book):
    sizes = [(i * 37 % 20_000, i * 53 % 3000) for i in range(10_000)]
    started = time.perf_counter()
    for n_in, n_out in sizes:
        book.max_rps("A10G", n_in, n_out)
    per_call = (time.perf_counter() - started) / len(sizes)
    assert per_call < 20e-6, f"{per_call * 1e6:.1f} us per lookup"


# -- capacity at a request's own size ------------------------------------------------------------
def test_rate_at_the_measured_sizes_is_the_table(book):
    for hw in book.hardware_names():
        for i, n_in in enumerate(book.input_edges):
            for j, n_out in enumerate(book.output_edges):
                assert book.rate_at(hw, n_in, n_out) == pytest.approx(book.max_rps_at(hw, i, j)), (hw, n_in, n_out)


def test_rate_between_sizes_lies_between_its_neighbours_and_falls_with_size(book):
    lower, upper = book.max_rps("A10G", 250, 250), book.max_rps("A10G", 500, 500)
    rates = [book.rate_at("A10G", n, n) for n in range(251, 500, 12)]
    assert all(upper <= r <= lower for r in rates)
    assert rates == sorted(rates, reverse=True)
    assert book.rate_at("A10G", 300, 300) > 2 * book.max_rps("A10G", 300, 300)  # the upper edge is 500 x 500
    # half-way in replica-seconds, the work measure that interpolates linearly
    middle = book.rate_at("A10G", 250, 375)
    assert 1 / middle == pytest.approx(0.5 / book.max_rps("A10G", 250, 250) + 0.5 / book.max_rps("A10G", 250, 500))


def test_rate_at_cannot_serve_what_the_upper_edge_cannot(book):
    assert book.rate_at("L4", 2500, 100) == 0.0  # L4 not profiled past 2000 input tokens
    assert book.rate_at("L4", 10, 10) == book.max_rps("L4", 25, 25)  # below the first edge: the first edge


def test_vectorised_request_seconds_match_rate_at(book):
    inputs = np.array([1, 25, 60, 300, 999, 1800, 2500, 9000, 20000])
    outputs = np.array([1, 30, 250, 700, 1500, 2000, 40, 100, 3000])
    for hw in book.hardware_names():
        seconds = book.request_seconds(hw, inputs, outputs)
        for s, n_in, n_out in zip(seconds, inputs, outputs, strict=True):
            rate = book.rate_at(hw, int(n_in), int(n_out))
            assert (s == np.inf) if rate == 0 else s == pytest.approx(1 / rate), (hw, n_in, n_out)


def test_bucket_request_seconds_are_the_mean_per_bucket(book):
    inputs, outputs = [260, 490, 30], [260, 490, 30]
    grid = book.bucket_request_seconds("A100-80GB", inputs, outputs)
    i, j = book.bucket(260, 260)
    assert grid[i, j] == pytest.approx(
        (1 / book.rate_at("A100-80GB", 260, 260) + 1 / book.rate_at("A100-80GB", 490, 490)) / 2
    )
    assert grid[0, 0] == pytest.approx(1 / book.max_rps_at("A100-80GB", 0, 0))  # no request there: the table
    assert np.isinf(book.bucket_request_seconds("L4", [3000], [10])).sum() >= 1


def test_past_the_last_edges_a_request_costs_at_least_proportionally_more(book):
    """A 10k-token answer holds a replica at least 5x as long as a 2k-token one: charging it the last
    profiled edge's figure would tell the router and the planner that a reasoning model's answers are cheap."""
    for hw in ("A100-80GB", "H100", "L4"):
        edge = book.rate_at(hw, 100, 2000)
        for longer in (4000, 11000):
            ratio = edge / book.rate_at(hw, 100, longer)
            assert longer / 2000 <= ratio <= (longer / 2000) ** 2 + 1e-9, (hw, longer, ratio)
        assert book.rate_at(hw, 100, 4000) > book.rate_at(hw, 100, 11000)
    # inputs past the last input edge likewise; within the edges nothing changes
    assert book.rate_at("H100", 32000, 100) <= book.rate_at("H100", 16000, 100) / 2
    assert book.rate_at("H100", 16000, 2000) == pytest.approx(book.max_rps("H100", 16000, 2000))


def test_weights_count_a_request_as_that_many_in_the_histogram_and_the_bucket_means(book):
    inputs, outputs, weights = [260, 490, 30, 3000], [260, 490, 30, 100], [1.0, 3.0, 0.5, 2.0]
    repeated = [k for k, w in enumerate([2, 6, 1, 4]) for _ in range(w)]  # the same proportions, as repeats
    np.testing.assert_allclose(
        book.histogram(inputs, outputs, weights),
        book.histogram([inputs[k] for k in repeated], [outputs[k] for k in repeated]),
    )
    weighted = book.bucket_request_seconds("A100-80GB", inputs, outputs, weights=weights)
    np.testing.assert_allclose(
        weighted,
        book.bucket_request_seconds("A100-80GB", [inputs[k] for k in repeated], [outputs[k] for k in repeated]),
    )
    i, j = book.bucket(260, 260)
    assert weighted[i, j] != pytest.approx(book.bucket_request_seconds("A100-80GB", inputs, outputs)[i, j])
    for bad in ([1.0, 1.0], [1.0, 0.0, 1.0, 1.0], [1.0, float("nan"), 1.0, 1.0]):
        with pytest.raises(ValueError, match="weights"):
            book.histogram(inputs, outputs, bad)
        with pytest.raises(ValueError, match="weights"):
            book.bucket_request_seconds("A100-80GB", inputs, outputs, weights=bad)


def test_a_book_pickles_and_a_copy_keeps_its_own_grid_memo():
    import copy
    import pickle

    from ricardo.profiles.catalog import load_default_book

    book = load_default_book()
    hw = book.hardware_names()[0]
    book.rate_at(hw, 300, 120)
    again = pickle.loads(pickle.dumps(book))
    assert again.rate_at(hw, 300, 120) == book.rate_at(hw, 300, 120)
    clone = copy.copy(book)
    assert clone.grid_point is not book.grid_point and clone.grid_point.__wrapped__.__self__ is clone  # type: ignore[attr-defined]
