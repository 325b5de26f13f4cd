"""A backend's credentials come from the config version in force. `GatewayState.apply` keeps a live backend (its
session, its connections) when the next version names it again, and meant to make a new one when its credentials
changed, but compared the *redacted* URLs (`http://user:***@host`): a new password, a new token-as-user, or a new
pool `api_key` left the backend sending the old ones until a restart, every request a 401 at the backend.

A replica meets such a change in one version whenever it skips versions: the Redis store delivers the version in
force, not every one between (a replica that was cut off while a pool was removed and added again with new
credentials, or that refused the version in between)."""

import base64

from ricardo.gateway.config import GatewayConfig
from ricardo.gateway.state import GatewayState


def state_with(pool: dict) -> GatewayState:
    config = GatewayConfig.model_validate({"models": ["llama2-7b"], "pools": [pool]})
    state = GatewayState(config)
    apply(state, 1, state.shared.model_dump(mode="json"))
    return state


def apply(state: GatewayState, version: int, doc: dict) -> None:
    state.apply(version, doc)


async def test_a_new_password_in_a_backend_url_is_used():
    state = state_with({"name": "a10g", "hardware": "A10G", "backends": ["http://alice:old@127.0.0.1:9101"]})
    try:
        doc = state.shared.model_dump(mode="json")
        doc["pools"][0]["backends"] = ["http://alice:new@127.0.0.1:9101"]
        apply(state, 3, doc)
        session = state.pools["a10g"].backends[0].session
        assert session.headers.get("Authorization") == "Basic " + base64.b64encode(b"alice:new").decode()
    finally:
        await state.close()


async def test_a_new_api_key_of_a_pool_is_used():
    state = state_with({"name": "a10g", "hardware": "A10G", "api_key": "old", "backends": ["http://127.0.0.1:9101"]})
    try:
        doc = state.shared.model_dump(mode="json")
        doc["pools"][0]["api_key"] = "new"
        apply(state, 3, doc)
        session = state.pools["a10g"].backends[0].session
        assert session.headers.get("Authorization") == "Bearer new", session.headers.get("Authorization")
    finally:
        await state.close()
