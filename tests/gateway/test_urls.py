"""Which backend URLs the gateway refuses, and how URLs are shown."""

import ipaddress

import pytest
from pydantic import ValidationError
from ricardo.gateway.config import GatewayConfig, backend_id
from ricardo.gateway.urls import Listener, UnsafeURL, check_backend_url, is_loopback, redact, split_credentials


@pytest.mark.parametrize(
    "text, shown",
    [
        ("http://user:pass@h:1/x", "http://user:***@h:1/x"),
        ("https://token@h/", "https://***@h/"),  # a lone user is often a token
        ("see http://a:b@h1 and redis://:pw@h2:6379/0", "see http://a:***@h1 and redis://:***@h2:6379/0"),
        ("http://h3/path@not-credentials", "http://h3/path@not-credentials"),
        ("http://u:p:q@h", "http://u:***@h"),
    ],
)
def test_redact(text, shown):
    assert redact(text) == shown


def test_credentials_are_split_off_decoded():
    assert split_credentials("http://us%40er:p%40ss@h:1/v") == ("http://h:1/v", ("us@er", "p@ss"))
    assert split_credentials("http://h:1") == ("http://h:1", None)
    assert backend_id("http://u:p@h:1/") == backend_id("http://u:***@h:1") == "http://h:1"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://169.254.1.1:8000",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[fe80::1%25eth0]:80/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://168.63.129.16/machine?comp=goalstate",
        "http://metadata.google.internal./",
        "ftp://h/",
    ],
)
def test_unsafe_urls(url):
    with pytest.raises(UnsafeURL):
        check_backend_url(url)


def test_config_files_are_checked_too():
    pools = [{"name": "p", "hardware": "A10G", "backends": ["http://2852039166:80"]}]  # 169.254.169.254
    with pytest.raises(ValidationError, match="metadata"):
        GatewayConfig.model_validate({"pools": pools})
    pools = [{"name": "p", "hardware": "A10G", "api_key": "k", "backends": ["http://u:p@h:1"]}]
    with pytest.raises(ValidationError, match="not both"):
        GatewayConfig.model_validate({"pools": pools})
    GatewayConfig.model_validate({"pools": [{"name": "p", "hardware": "A10G", "backends": ["http://u:p@h:1"]}]})


def test_the_listener_itself():
    own = Listener("127.0.0.1", 8000)
    for url in ("http://127.0.0.1:8000", "http://localhost:8000/v1", "http://0.0.0.0:8000", "http://x.localhost:8000"):
        with pytest.raises(UnsafeURL):
            own.check(url)
    for url in ("http://127.0.0.1:8001", "http://127.0.0.2:8000", "http://10.0.0.1:8000", "https://127.0.0.1"):
        own.check(url)
    anywhere = Listener("0.0.0.0", 8000)
    for url in ("http://127.0.0.2:8000", "http://[::1]:8000"):
        with pytest.raises(UnsafeURL):
            anywhere.check(url)
    anywhere.check("http://10.255.0.1:8000")
    with pytest.raises(UnsafeURL):  # what a name resolved to counts as well
        own.check("http://my-gateway:8000", [ipaddress.ip_address("127.0.0.1")])


def test_loopback_names():
    assert all(map(is_loopback, ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LOCALHOST.", "a.localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "evil.example", "localhost.evil.example", ""]))
