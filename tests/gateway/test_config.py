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
