"""Session-wide fixtures: the loopback Hub, generated weights, clean environments, corpus."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # make `tests.support` importable however pytest is started
    sys.path.insert(0, str(ROOT))

from tests.support import HRNET_REPO, TINY_CONFIG, TINY_REPO  # noqa: E402
from tests.support import caches, weights  # noqa: E402
from tests.support.hubserver import HubServer  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than 5 s (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    """Session directory where generated weights are kept (read-only files: copy, don't modify)."""
    return weights.set_weights_dir(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="session")
def hrnet_weights(weights_dir) -> bytes:
    """Random hrnet_w18 weights as safetensors bytes (~81 MiB), timm's exact key layout."""
    return weights.timm_safetensors_bytes("hrnet_w18")


@pytest.fixture(scope="session")
def tiny_weights() -> bytes:
    """A small valid safetensors file (no torch needed), served as ``org/tiny/model.safetensors``."""
    return weights.tiny_safetensors_bytes()


def _serve_tiny(hub: HubServer, tiny: bytes) -> None:
    hub.add_file(TINY_REPO, "config.json", TINY_CONFIG, lfs=False)
    hub.add_file(TINY_REPO, "model.safetensors", tiny)


@pytest.fixture(scope="session")
def hub_server(hrnet_weights, tiny_weights):
    """Session Hub on 127.0.0.1 serving ``timm/hrnet_w18.ms_aug_in1k/model.safetensors``
    (generated hrnet_w18) and ``org/tiny`` (``config.json`` + LFS ``model.safetensors``).

    Shared by all tests: add files under your own repo ids, never flip its fault switches
    (use ``fresh_hub`` for that); compare ``hub_server.requests`` by slices, not totals.
    """
    with HubServer() as hub:
        hub.add_file(HRNET_REPO, "model.safetensors", hrnet_weights)
        _serve_tiny(hub, tiny_weights)
        yield hub


@pytest.fixture
def fresh_hub(tiny_weights):
    """A private Hub for one test, serving only ``org/tiny``; fault switches allowed."""
    with HubServer() as hub:
        _serve_tiny(hub, tiny_weights)
        yield hub


@pytest.fixture(scope="session")
def hrnet_hf_cache(hub_server, tmp_path_factory) -> Path:
    """A HF hub cache populated by the real client with hrnet_w18 (read-only: copy it
    with ``shutil.copytree(..., symlinks=True)`` before breaking anything)."""
    cache = tmp_path_factory.mktemp("hrnet-hf-cache")
    caches.populate_hf_cache(hub_server.url, cache, HRNET_REPO, "model.safetensors")
    return cache


@pytest.fixture(scope="session")
def tiny_cache_template(hub_server, tmp_path_factory) -> Path:
    """A HF hub cache holding ``org/tiny`` (config.json + LFS model.safetensors), written by the real
    client. Read-only: use ``tiny_cache`` for a copy to break."""
    cache = tmp_path_factory.mktemp("tiny-cache")
    for name in ("config.json", "model.safetensors"):
        caches.populate_hf_cache(hub_server.url, cache, TINY_REPO, name)
    return cache


@pytest.fixture
def tiny_cache(tiny_cache_template, tmp_path) -> Path:
    """A private copy of ``tiny_cache_template`` (links kept as links), free to break."""
    cache = tmp_path / "hub"
    shutil.copytree(tiny_cache_template, cache, symlinks=True)
    return cache


@pytest.fixture
def clean_env(tmp_path_factory) -> dict[str, str]:
    """``os.environ`` copy without HF_*/HUGGINGFACE_*/TRANSFORMERS_*/TORCH_HOME/XDG_CACHE_HOME
    and proxy variables, with HOME pointed at a new empty directory."""
    return caches.clean_environ(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="session")
def corpus() -> Path:
    """``shared/corpus`` beside the repository (skips when it is not there)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
    if not path.is_dir():
        pytest.skip(f"corpus not found at {path}: expected shared/ beside the repository")
    return path
