"""A backend's /metrics with NaN and infinite samples: nothing non-finite reaches the admin API's JSON or the views."""

from __future__ import annotations

import json

from ricardo.gateway.telemetry import parse
from ricardo.policies.external import external_load

NAN_PAGE = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} NaN
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} +Inf
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} NaN
"""


def test_non_finite_samples_leave_the_admin_apis_json_valid():
    seen = parse(NAN_PAGE, 10.0)
    shown = {} if seen is None else seen.as_json(10.0)
    json.dumps(shown, allow_nan=False)  # what GET /admin/pools serves of it: strict JSON has no NaN nor Infinity
    if seen is not None:
        load = external_load([seen], 0.05, 10.0, 15.0)
        json.dumps(load, allow_nan=False)
