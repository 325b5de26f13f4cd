import pytest
from ricardo.emulator.faults import parse_faults


def test_a_spec_parses_into_faults():
    f = parse_faults("cut-after=2, error-rate=0.25,min-tokens=2,slow=3,seed=7")
    assert (f.cut_after, f.error_rate, f.min_tokens, f.slow) == (2, 0.25, 2, 3.0)
    assert f.breaks_answers and not f.applies(1) and f.applies(2)
    assert not parse_faults(None).breaks_answers and parse_faults("").error_rate == 0
    assert parse_faults("hang").hang and parse_faults("no-done").no_done


def test_error_rate_draws_are_seeded():
    a, b = parse_faults("error-rate=0.5,seed=3"), parse_faults("error-rate=0.5,seed=3")
    draws = [a.fail_now() for _ in range(200)]
    assert draws == [b.fail_now() for _ in range(200)]
    assert 60 < sum(draws) < 140


@pytest.mark.parametrize("spec", ["cut-after=-1", "error-rate=2", "slow=0", "hang=1", "explode", "stall-after=x"])
def test_bad_specs_say_what_is_expected(spec):
    with pytest.raises(ValueError, match="expected error-rate"):
        parse_faults(spec)
