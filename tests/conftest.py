"""Shared fixtures: no network, a private cache, small recipes on the tiny model, the models that
several test modules train (each trained once per session), and the fake Hub.

Tests marked `slow` train a model (or run a recipe or subprocess that does); `make test-fast`
(pytest -m "not slow") runs the rest in under a minute."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
# The tiny model's matmuls are too small for two threads to help, and on a busy machine two
# OpenMP threads spin against each other (measured 10x slower). Subprocesses inherit this.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import yaml  # noqa: E402
from transformers.utils import logging as _hf_logging  # noqa: E402

from fake_hub import FakeHub, dead_endpoint  # noqa: E402

# transformers creates its log handler on first use, bound to the sys.stderr of that moment. Made
# inside a test that captures output (capsys), it would write to a closed stream for the rest of
# the session ("--- Logging error ---" tracebacks in later tests' stderr); made here, at
# collection, it binds to a stream that lives as long as the session.
_hf_logging.get_logger("transformers")


# `make test` runs the suite on every core (pytest-xdist, `--dist loadfile`: a module's tests on
# one worker, so its module fixtures are built once), one torch thread per worker. These modules
# must also share a worker: the users of the preference run (trained once per worker, in one run
# directory they all extend), and the two recipes on cpu-ddp's fixed port. (xdist 3.8's
# `--dist loadgroup` marks would say this, but group nothing under pytest 9.2's node ids.)
SHARED_WORKER = {"test_handoff.py": "preference_run", "test_preference.py": "preference_run",
                 "test_rm.py": "preference_run", "test_distributed.py": "cpu_ddp",
                 "test_rl.py": "cpu_ddp"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None

    from xdist.scheduler import LoadScopeScheduling  # only imported under pytest-xdist

    class SharedWorkerScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::")[0]
            return SHARED_WORKER.get(Path(module).name, module)

    return SharedWorkerScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session", autouse=True)
def align_cache(tmp_path_factory):
    """Tiny-model builds are cached per test session, never in the user's home."""
    path = tmp_path_factory.mktemp("align-cache")
    old = os.environ.get("ALIGN_CACHE")
    os.environ["ALIGN_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ALIGN_CACHE", None)
    else:
        os.environ["ALIGN_CACHE"] = old


# The entity boundary: the tests below were tuned on it; the fact boundary (the default) has
# its own tests (test_world.py, test_fact_honesty.py).
SMALL_WORLD = {"seed": 0, "n_entities": 24, "boundary": "entity"}


def write_recipe(tmp_path, stages: dict, name: str = "t", **top) -> str:
    recipe = {"name": name, "run_dir": str(tmp_path / "run"), "model": {"name_or_path": "tiny"},
              "world": dict(SMALL_WORLD), "stages": stages, **top}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


@pytest.fixture(scope="session")
def pretrained_tiny(tmp_path_factory) -> str:
    """The tiny model pretrained on the small world's corpus, once per session (full weights).

    Tests that fine-tune point `model.name_or_path` at it, so each of them starts from a model
    that knows the world's language, as a real base model would.
    """
    from align.runner import run_recipe

    tmp = tmp_path_factory.mktemp("pretrained")
    stages = {"pretrain": {"kind": "pretrain", "data": "world:corpus", "args": {
        "num_train_epochs": 60, "per_device_train_batch_size": 16, "learning_rate": 3e-3,
        "lr_scheduler_type": "cosine", "save_steps": 10_000, "logging_steps": 20,
        "disable_tqdm": True}}}
    artifact = run_recipe(write_recipe(tmp, stages, name="pretrained"))["pretrain"]
    return str(artifact.model_path())


def small_tiny_model() -> Path:
    """The untrained tiny model of the small world (built once, in the session's cache)."""
    from align.data.world import WorldConfig
    from align.tiny import TinyConfig, build_tiny

    return build_tiny(TinyConfig(world=WorldConfig(**SMALL_WORLD)))


@pytest.fixture(scope="session")
def tiny_model(align_cache) -> Path:
    return small_tiny_model()


@pytest.fixture(scope="session")
def preference_run(tmp_path_factory) -> dict:
    """The preference recipe at test size (pretrain, sft, rm, dpo, kto, orpo), trained once per
    session and shared by test_rm, test_preference and test_handoff (see preference_pipeline)."""
    from preference_pipeline import train_preference_run

    return train_preference_run(tmp_path_factory)


# -- the Hub: only ever the fake one on loopback (tests/fake_hub.py) ------------------------------

@pytest.fixture
def hub_loopback(monkeypatch, tmp_path) -> str:
    """No real token, no saved login, no writes to the real HF_HOME, and every endpoint
    huggingface_hub knows pointed at a loopback port where nothing listens (returned): nothing a
    test does can reach huggingface.co. HF_HUB_OFFLINE is lifted so that pushes are attempted."""
    from huggingface_hub import constants

    dead = dead_endpoint()
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(home / ".agent_harnesses.json"))
    return dead


@pytest.fixture
def hub(hub_loopback, monkeypatch):
    """A FakeHub on 127.0.0.1 that huggingface_hub talks to; it records what it was sent."""
    from huggingface_hub import constants

    server = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    yield server
    server.stop()
