"""One error hierarchy: each class says what went wrong and what HTTP status it becomes, and keeps the built-in
class callers may already catch; the commands report bad input without a traceback."""

import pytest
from ricardo.cli import main
from ricardo.cli.plan import WorkloadError
from ricardo.errors import Conflict, InvalidInput, NotFound, RicardoError, Unavailable
from ricardo.gateway.config import ConfigError
from ricardo.gateway.store import StoreUnavailable
from ricardo.gateway.urls import UnsafeURL
from ricardo.loadgen.replay import ServerUnreachable
from ricardo.loadgen.traces import TraceError
from ricardo.policies.planner import PlanError
from ricardo.profiles.catalog import load_default_book
from ricardo.protocol.openai import OpenAIError


@pytest.mark.parametrize(
    "cls, builtin, status",
    [
        (InvalidInput, ValueError, 400),
        (NotFound, KeyError, 404),
        (Conflict, RicardoError, 409),
        (Unavailable, RuntimeError, 503),
        (StoreUnavailable, RuntimeError, 503),
        (ServerUnreachable, RuntimeError, 503),
        (TraceError, ValueError, 400),
        (WorkloadError, ValueError, 400),
        (PlanError, ValueError, 422),
        (ConfigError, ValueError, 422),
        (UnsafeURL, ValueError, 422),
    ],
)
def test_each_error_is_a_ricardo_error_and_keeps_its_builtin(cls, builtin, status):
    assert issubclass(cls, RicardoError) and issubclass(cls, builtin) and cls.status == status


def test_openai_errors_carry_their_own_status():
    assert isinstance(OpenAIError(429, "slow down"), RicardoError) and OpenAIError(429, "x").status == 429


def test_a_missing_name_reads_as_a_sentence():
    with pytest.raises(NotFound) as caught:
        load_default_book().canonical("TPU-v9")
    assert str(caught.value).startswith("no profile for hardware 'TPU-v9'")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["plan", "--workload", "arena", "--rate", "2", "--profile", "{profile}"], "not a profile file"),
        (["plan", "--workload", "arena", "--rate", "2", "--price", "TPU=1"], "no profile for hardware"),
        (["plan", "--workload", "nope", "--rate", "2"], "neither a file nor a known name"),
        (["simulate", "--trace", "azure-conv", "--fleet", "{profile}", "--duration", "5"], "--fleet"),
    ],
)
def test_commands_report_bad_input_without_a_traceback(tmp_path, capsys, argv, message):
    broken = tmp_path / "broken.yaml"
    broken.write_text("gpus: [unclosed\n")
    assert main([a.replace("{profile}", str(broken)) for a in argv]) == 2
    assert message in capsys.readouterr().err
