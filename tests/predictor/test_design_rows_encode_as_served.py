"""`Design.rows` encodes a request as the fitted model serves it: each dense feature held to its range in training
(held-out rows scored beyond that range otherwise extrapolate, while the served model does not)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from ricardo.predictor.features import features_from_body
from ricardo.predictor.model import Design, fit_model, log_target, ridge_coef

from tests.predictor.synthetic import requests


def test_held_out_rows_are_encoded_as_the_fitted_model_serves_them():
    samples = [(features_from_body(body, 20 + 3 * (i % 40)), n) for i, (body, n) in enumerate(requests(200, seed=5))]
    fitted = fit_model(samples)
    design, rows = Design.fit([features for features, _ in samples])
    coef = ridge_coef(rows, log_target(samples))
    inside = samples[0][0]
    # the same prompt, far longer and with a cap: beyond the training range of the input and max_tokens features
    beyond = replace(inside, input_tokens=60_000, chars=250_000, max_tokens=9_000)
    for features in (inside, beyond):
        scored = float((design.rows([features]) @ coef)[0])
        assert np.isclose(scored, fitted.log_prediction(features), atol=1e-4), (features.input_tokens, scored)
