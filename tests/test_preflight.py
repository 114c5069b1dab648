"""The preflight: hub access (gated, not found, unreachable, offline cache, local paths) with huggingface_hub's
errors mocked, never the network; and `check(cfg)` on composed configs (model id, GLUE's hub dataset, data files)."""

from __future__ import annotations

from types import SimpleNamespace

import datasets
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

from mtllora import preflight
from mtllora.preflight import PreflightError, check, check_hub_access, model_ids
from mtllora.testing import write_tiny_glue

from .benchmarks.test_commonsense import write_commonsense
from .test_configs import _compose

RESPONSE = SimpleNamespace(headers={}, request=None)  # what huggingface_hub's errors read from a response
LOGIN = "`hf auth login` (or `huggingface-cli login`), or set HF_TOKEN"


@pytest.fixture
def hub(monkeypatch):
    """A fake hub: auth_check raises what the real one raises for these ids; the calls are recorded."""
    calls = []

    def auth_check(repo_id: str, repo_type: str = "model") -> None:
        calls.append((repo_id, repo_type))
        if repo_id == "meta-llama/Llama-2-7b-hf":
            raise GatedRepoError("403 Client Error. Cannot access gated repo", response=RESPONSE)
        if repo_id.startswith("nobody/"):
            raise RepositoryNotFoundError("404 Client Error. Repository Not Found", response=RESPONSE)
        if repo_id == "down/model":
            raise HfHubHTTPError("503 Server Error", response=RESPONSE)

    monkeypatch.setattr(preflight, "is_offline_mode", lambda: False)
    monkeypatch.setattr(preflight, "auth_check", auth_check)
    return calls


def test_online_lists_every_inaccessible_id_with_the_fix(hub, tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(PreflightError) as error:
        check_hub_access(
            ["meta-llama/Llama-2-7b-hf", "ok/model", "nobody/llama", "down/model", str(tmp_path / "model")],
            ["nobody/data", str(tmp_path / "none")],
        )
    assert str(error.value).splitlines() == [
        "5 of the run's models/datasets cannot be loaded:",
        "  - model meta-llama/Llama-2-7b-hf is gated: accept its licence at "
        f"https://huggingface.co/meta-llama/Llama-2-7b-hf with your Hugging Face account, then log in as that account: "
        f"{LOGIN}",
        f"  - model nobody/llama: not found on the hub: check the name (or, if it is private, log in with an account "
        f"that can read it: {LOGIN})",
        "  - model down/model: could not check it on the hub (HfHubHTTPError: 503 Server Error); without network "
        "access, set HF_HUB_OFFLINE=1 and have it in the local cache",
        f"  - dataset nobody/data: not found on the hub: check the name (or, if it is private, log in with an account "
        f"that can read it: {LOGIN})",
        f"  - {tmp_path / 'none'}: no such local file or folder",
    ]
    assert hub == [
        ("meta-llama/Llama-2-7b-hf", "model"),
        ("ok/model", "model"),
        ("nobody/llama", "model"),
        ("down/model", "model"),
        ("nobody/data", "dataset"),
    ]  # local paths never reach the hub
    check_hub_access(["ok/model", str(tmp_path / "model")])  # all accessible: no error


def test_a_gated_dataset_links_its_dataset_page(hub, monkeypatch):
    def gated(repo_id: str, repo_type: str = "model") -> None:
        raise GatedRepoError("403", response=RESPONSE)

    monkeypatch.setattr(preflight, "auth_check", gated)
    with pytest.raises(PreflightError, match=r"accept its licence at https://huggingface.co/datasets/org/data "):
        check_hub_access([], ["org/data"])


def test_offline_checks_the_local_cache_without_the_network(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("offline: the hub must not be asked")

    monkeypatch.setattr(preflight, "is_offline_mode", lambda: True)
    monkeypatch.setattr(preflight, "auth_check", no_network)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    cached = tmp_path / "hub" / "models--org--cached"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text("abc123")
    (cached / "snapshots" / "abc123").mkdir(parents=True)
    (cached / "snapshots" / "abc123" / "config.json").write_text("{}")
    (cached / "snapshots" / "abc123" / "model.gguf").write_text("")
    (tmp_path / "datasets" / "nyu-mll___glue").mkdir(parents=True)  # a prepared datasets copy
    check_hub_access(["org/cached", "org/cached::model.gguf"], ["nyu-mll/glue"])
    with pytest.raises(PreflightError) as error:
        check_hub_access(["org/missing", "org/cached::other.gguf"], ["org/data"])
    assert str(error.value).splitlines() == [
        "3 of the run's models/datasets cannot be loaded:",
        f"  - model org/missing: HF_HUB_OFFLINE=1 and it is not in the local cache ({tmp_path / 'hub'}): load it "
        "once with network access (e.g. `hf download org/missing`), or use a local copy",
        f"  - model org/cached (file other.gguf): HF_HUB_OFFLINE=1 and it is not in the local cache "
        f"({tmp_path / 'hub'}): load it once with network access (e.g. `hf download org/cached`), or use a local copy",
        f"  - dataset org/data: HF_HUB_OFFLINE=1 and it is not in the local cache ({tmp_path / 'hub'} or "
        f"{tmp_path / 'datasets'}): load it once with network access (e.g. `hf download org/data --repo-type "
        "dataset`), or use a local copy",
    ]


def test_local_paths_and_gguf_files(hub, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.gguf").write_text("")
    check_hub_access([f"{tmp_path / 'm'}::a.gguf", "./"])
    with pytest.raises(PreflightError, match=rf"  - {tmp_path / 'm' / 'b.gguf'}: no such local file$"):
        check_hub_access([f"{tmp_path / 'm'}::b.gguf"])
    with pytest.raises(PreflightError, match=r"  - models/a/b: no such local file or folder"):
        check_hub_access(["models/a/b"])  # two slashes: a path, not a hub id
    assert hub == []


def test_check_the_commonsense_paper_profile(hub, tmp_path):
    cfg = _compose("experiment=commonsense", "method=mtl_lora", f"paths.data_dir={write_commonsense(tmp_path)}")
    assert model_ids(cfg) == ["meta-llama/Llama-2-7b-hf"]
    with pytest.raises(PreflightError) as error:
        check(cfg)
    message = str(error.value)
    assert message.startswith(
        "1 of the run's models/datasets cannot be loaded:\n  - model meta-llama/Llama-2-7b-hf is gated: accept its "
        "licence at https://huggingface.co/meta-llama/Llama-2-7b-hf"
    )
    # The data problem is in the same error: the fixture's train set is partial and the paper profile refuses it.
    assert f"\ndata: commonsense: the data under data_dir={tmp_path} is not usable:\n  - partial train set: " in message
    assert hub == [("meta-llama/Llama-2-7b-hf", "model")]


def test_check_glue_from_the_hub_checks_the_dataset_too(hub, tmp_path):
    cfg = _compose("experiment=glue", "method=lora", "paths.data_dir=null", "model.name_or_path=ok/model")
    check(cfg)  # accessible: nothing raised
    assert hub == [("ok/model", "model"), ("nyu-mll/glue", "dataset")]
    hub.clear()
    glue_dir = write_tiny_glue(tmp_path, all_tasks=True)
    check(_compose("experiment=glue", "method=lora", f"paths.data_dir={glue_dir}", "model.name_or_path=ok/model"))
    assert hub == [("ok/model", "model")]  # a local GLUE copy: no hub dataset
