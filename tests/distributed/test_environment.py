"""What ``pipeline.distributed.initialize`` reads from the environment, and one line for a bad value."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipeline.distributed import DistributedError, settings
from tests.conftest import ROOT

NAMES = ("PIPELINE_DISTRIBUTED", "PIPELINE_COORDINATOR", "PIPELINE_NUM_PROCESSES", "PIPELINE_PROCESS_ID",
         "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


@pytest.fixture
def env(monkeypatch):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_nothing_set_is_one_process(env):
    assert settings() is None
    env(PIPELINE_DISTRIBUTED="off", PIPELINE_COORDINATOR="h:1", PIPELINE_NUM_PROCESSES="2", PIPELINE_PROCESS_ID="0")
    assert settings() is None


def test_pipeline_names_then_jax_names(env):
    env(JAX_COORDINATOR_ADDRESS="10.0.0.1:1234", JAX_NUM_PROCESSES="4", JAX_PROCESS_ID="3")
    assert settings() == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    env(PIPELINE_COORDINATOR="localhost:99", PIPELINE_PROCESS_ID="1")
    assert settings() == {"coordinator_address": "localhost:99", "num_processes": 4, "process_id": 1}


def test_auto_passes_only_what_is_set(env):
    env(PIPELINE_DISTRIBUTED="auto")
    assert settings() == {}
    env(PIPELINE_DISTRIBUTED="AUTO", JAX_COORDINATOR_ADDRESS="[::1]:8476")
    assert settings() == {"coordinator_address": "[::1]:8476"}


@pytest.mark.parametrize("values, message", [
    ({"PIPELINE_NUM_PROCESSES": "two"}, "bad value for PIPELINE_NUM_PROCESSES: 'two' is not a positive integer"),
    ({"PIPELINE_NUM_PROCESSES": "0"}, "bad value for PIPELINE_NUM_PROCESSES: '0' is not a positive integer"),
    ({"PIPELINE_PROCESS_ID": "", "JAX_PROCESS_ID": "-1"},
     "bad value for JAX_PROCESS_ID: '-1' is not a non-negative integer"),
    ({"PIPELINE_PROCESS_ID": "2"}, "bad value for PIPELINE_PROCESS_ID: 2 must be less than PIPELINE_NUM_PROCESSES=2"),
    ({"PIPELINE_COORDINATOR": "localhost"}, "bad value for PIPELINE_COORDINATOR: 'localhost' is not HOST:PORT"),
    ({"PIPELINE_COORDINATOR": "h:70000"}, "bad value for PIPELINE_COORDINATOR: 'h:70000' is not HOST:PORT"),
    ({"PIPELINE_DISTRIBUTED": "yes"}, "bad value for PIPELINE_DISTRIBUTED: 'yes'; choose auto or off"),
])
def test_bad_values_name_the_variable(env, values, message):
    env(**{"PIPELINE_COORDINATOR": "localhost:1234", "PIPELINE_NUM_PROCESSES": "2", "PIPELINE_PROCESS_ID": "1",
           **values})
    with pytest.raises(DistributedError) as err:
        settings()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_half_a_setting_names_what_is_missing(env):
    env(PIPELINE_COORDINATOR="localhost:1234")
    with pytest.raises(DistributedError, match="PIPELINE_NUM_PROCESSES and PIPELINE_PROCESS_ID not set "
                                               r"\(PIPELINE_COORDINATOR is\); set all three, or "
                                               "PIPELINE_DISTRIBUTED=auto"):
        settings()


def test_a_bad_value_through_the_command_line_is_one_line(env, cli):
    env(PIPELINE_COORDINATOR="localhost:1234", PIPELINE_NUM_PROCESSES="two", PIPELINE_PROCESS_ID="0")
    for argv in (["train", "digits_mlp", "steps=5"], ["sweep", "digits_mlp", "seed=range(0,2)"]):
        result = cli(*argv)
        assert result.code == 2
        assert result.err == "error: bad value for PIPELINE_NUM_PROCESSES: 'two' is not a positive integer\n"


def run_python(script: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    import os

    full = {k: v for k, v in os.environ.items() if k not in NAMES}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          env={**full, **env}, cwd=ROOT, timeout=timeout)


def test_one_process_needs_no_jax_and_the_helpers_do_nothing():
    proc = run_python("""
        import sys
        from pipeline import distributed
        assert distributed.initialize() is False and "jax" not in sys.modules
        assert distributed.is_primary() and not distributed.joined()
        value = {"run_dir": "runs/x"}
        assert distributed.broadcast_from_primary(value) is value
        distributed.sync("nothing to wait for")
        print("ok")
    """, {})
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


def test_an_unreachable_coordinator_is_one_line_not_an_abort():
    proc = run_python("""
        from pipeline.cli import main
        raise SystemExit(main(["train", "digits_mlp", "steps=5"]))
    """, {"PIPELINE_COORDINATOR": f"localhost:{free_port()}", "PIPELINE_NUM_PROCESSES": "2",
          "PIPELINE_PROCESS_ID": "1", "PIPELINE_DISTRIBUTED_TIMEOUT": "2"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: jax.distributed could not start (process 1 of 2, coordinator localhost:")
    assert "no coordinator answered" in proc.stderr and "Traceback" not in proc.stderr


def test_initialize_after_a_device_is_in_use_is_one_line():
    proc = run_python("""
        import jax
        jax.devices()
        from pipeline import distributed
        try:
            distributed.initialize()
        except distributed.DistributedError as exc:
            print(exc)
    """, {"PIPELINE_COORDINATOR": "localhost:1", "PIPELINE_NUM_PROCESSES": "1", "PIPELINE_PROCESS_ID": "0"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("jax.distributed could not start (process 0 of 1, coordinator localhost:1): "
                                  "jax.distributed.initialize() must be called before any JAX calls")


def free_port() -> int:
    from pipeline.launch import free_port

    return free_port()
