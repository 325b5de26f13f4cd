import pytest
import yaml
from pydantic import ValidationError
from ricardo.gateway.config import GatewayConfig, load_config


def test_embedded_default_config_is_valid():
    config = load_config(None)
    assert {p.hardware for p in config.pools} >= {"L4", "A10G", "A100-80GB", "H100", "CPU"}
    assert config.policy == "cost-aware"


def test_config_file_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"pools": [{"name": "a", "hardware": "A10G", "backends": ["http://127.0.0.1:9"]}]}))
    config = load_config(path)
    assert config.pools[0].name == "a" and config.slo.tpot_ms == 120


@pytest.mark.parametrize(
    "pools, message",
    [
        ([], "at least 1"),
        ([{"name": "a", "hardware": "L4"}, {"name": "a", "hardware": "L4"}], "unique"),
        ([{"name": "a", "hardware": "L4", "price_per_hour": -1}], "greater than or equal"),
        ([{"name": "a", "hardware": "L4", "backends": ["not a url"]}], "URL"),
        ([{"name": "a", "hardware": "L4", "backends": ["http://x:1", "http://x:1"]}], "twice"),
        ([{"name": "a", "hardware": "L4", "models": ["other"]}], "not in `models`"),
        ([{"name": "a", "hardware": "L4", "colour": "red"}], "Extra inputs"),
    ],
)
def test_bad_configs_are_refused_with_a_reason(pools, message):
    with pytest.raises(ValidationError, match=message):
        GatewayConfig.model_validate({"pools": pools})


def test_timeouts_default_to_seconds_and_none_caps_another():
    from ricardo.gateway.config import upstream_timeouts

    config = GatewayConfig.model_validate({"pools": [{"name": "a", "hardware": "L4"}]})
    t = upstream_timeouts(config.limits, config.pools[0])
    assert t.connect_s <= 5 and t.first_byte_s <= 60 and t.idle_s <= 30, "a hang surfaces in seconds"
    assert t.connect_s < t.first_byte_s <= t.response_s


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"limits": {"connect_timeout_s": 10, "first_byte_timeout_s": 5}}, "connection is part of the wait"),
        ({"limits": {"first_byte_timeout_s": 300, "response_timeout_s": 120}}, "includes its first byte"),
        (
            {"pools": [{"name": "cpu", "hardware": "CPU", "timeouts": {"first_byte_timeout_s": 900}}]},
            "pool cpu: first_byte_timeout_s",
        ),
        ({"pools": [{"name": "a", "hardware": "L4", "timeouts": {"idle_timeout_s": 0}}]}, "greater than 0"),
    ],
)
def test_timeouts_that_would_cap_one_another_are_refused(settings, message):
    doc = {"pools": [{"name": "a", "hardware": "L4"}], **settings}
    with pytest.raises(ValidationError, match=message):
        GatewayConfig.model_validate(doc)


def test_a_pool_overrides_some_timeouts_and_keeps_the_rest():
    from ricardo.gateway.config import upstream_timeouts

    config = GatewayConfig.model_validate(
        {
            "limits": {"idle_timeout_s": 15},
            "pools": [{"name": "cpu", "hardware": "CPU", "timeouts": {"first_byte_timeout_s": 120}}],
        }
    )
    t = upstream_timeouts(config.limits, config.pools[0])
    assert (t.first_byte_s, t.idle_s, t.response_s) == (120, 15, config.limits.response_timeout_s)


PAIR = {
    "name": "h100-a10g",
    "prefill": {"hardware": "H100", "backends": ["http://127.0.0.1:9101"]},
    "decode": {"hardware": "A10G", "backends": ["http://127.0.0.1:9102", "http://127.0.0.1:9103"]},
    "link_gbps": 100,
}


def test_a_pair_pool_has_its_roles_and_survives_a_round_trip():
    config = GatewayConfig.model_validate({"pools": [PAIR]})
    pool = config.pools[0]
    assert pool.is_pair and pool.role == "pair" and pool.hardware == "A10G"  # the decode type, filled in
    assert [(r.role, r.hardware, len(r.backends)) for r in pool.roles()] == [
        ("prefill", "H100", 1),
        ("decode", "A10G", 2),
    ]
    again = GatewayConfig.model_validate(config.model_dump(mode="json"))  # as the state store keeps it
    assert again.pools[0] == pool


@pytest.mark.parametrize(
    "change, message",
    [
        ({"link_gbps": None}, "link_gbps"),
        ({"decode": None}, "both"),
        ({"backends": ["http://127.0.0.1:9104"]}, "under `prefill` and `decode`"),
        ({"price_per_hour": 1.0}, "under `prefill` and `decode`"),
        ({"hardware": "H100"}, "decode type"),
        ({"decode": {"hardware": "A10G", "backends": ["http://127.0.0.1:9101"]}}, "twice"),
        ({"decode": {"hardware": "A10G", "draining": ["http://127.0.0.1:9109"]}}, "not in the pool"),
    ],
)
def test_bad_pairs_are_refused_with_a_reason(change, message):
    pool = {k: v for k, v in (PAIR | change).items() if v is not None}
    with pytest.raises(ValidationError, match=message):
        GatewayConfig.model_validate({"pools": [pool]})


def test_a_unified_pool_needs_its_hardware_and_no_link():
    with pytest.raises(ValidationError, match="needs `hardware`"):
        GatewayConfig.model_validate({"pools": [{"name": "a"}]})
    with pytest.raises(ValidationError, match="for pairs"):
        GatewayConfig.model_validate({"pools": [{"name": "a", "hardware": "L4", "link_gbps": 10}]})


@pytest.mark.parametrize(
    ("embedding_models", "message"), [({"bge": 0.02}, "not in `models`"), ({"llama2-7b": -1}, "negative")]
)
def test_embedding_models_are_served_models_with_a_price(embedding_models, message):
    with pytest.raises(ValidationError, match=message):
        GatewayConfig.model_validate({"pools": [{"name": "a", "hardware": "L4"}], "embedding_models": embedding_models})
