import numpy as np
import pytest
from ricardo.predictor.baselines import AIBrixBucketHistogram, GlobalMean, InputMultiple, MelangeBucketMean


def test_global_mean_is_a_running_mean():
    mean = GlobalMean()
    for output in (10, 20, 60):
        mean.observe(5, output)
    assert mean.predict(1000) == 30


def test_melange_buckets_by_its_input_edges_and_falls_back_to_the_global_mean():
    melange = MelangeBucketMean()
    for input_tokens, output in ((10, 100), (25, 300), (26, 7), (100, 9)):
        melange.observe(input_tokens, output)
    assert melange.predict(1) == 200  # bucket (0, 25]
    assert melange.predict(60) == 8  # bucket (25, 100]
    assert melange.predict(5000) == pytest.approx((100 + 300 + 7 + 9) / 4)


def test_aibrix_draws_powers_of_two_from_the_input_bucket_reproducibly():
    def draws(seed):
        aibrix = AIBrixBucketHistogram(seed)
        for output in (30, 34, 1000):  # log2 buckets 5, 5, 10 for inputs in bucket round(log2(100)) = 7
            aibrix.observe(100, output)
        aibrix.observe(4000, 2)
        return [aibrix.predict(110) for _ in range(200)]

    first = draws(seed=3)
    assert set(first) == {32.0, 1024.0} and first == draws(seed=3)
    assert 0.5 < np.mean(np.array(first) == 32.0) < 0.85


def test_llm_d_multiplies_the_input():
    assert InputMultiple(1.5).predict(200) == 300
