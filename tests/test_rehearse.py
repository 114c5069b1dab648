"""The rehearsal (`make rehearse`) runs each paper profile as it is, but for the model, data, steps and eval size."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mtllora import plan, rehearse

SCRATCH = Path("/scratch")


def _flat(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


@pytest.mark.parametrize("profile", rehearse.PROFILES)
@pytest.mark.parametrize("method", ["mtl_lora", "dora"])
def test_the_rehearsal_changes_only_the_swapped_keys(profile, method):
    paper = plan.compose([f"experiment={profile}", f"method={method}"])
    rehearsal = plan.compose([f"experiment={profile}", f"method={method}", *rehearse.overrides(profile, SCRATCH)])
    before, after = (_flat(OmegaConf.to_container(c, resolve=False)) for c in (paper, rehearsal))
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    assert changed == {override.split("=", 1)[0] for override in rehearse.overrides(profile, SCRATCH)}
    assert after["trainer.max_steps"] == 2 and after["benchmark.max_eval_samples"] == 2
    assert after["profile"] == profile and after["deepspeed.config.zero_optimization.stage"] == 2
    OmegaConf.to_container(rehearsal.benchmark, resolve=True)  # nothing left to fill in (image_text's data_dir)


def test_swapped_keys_are_model_data_steps_and_eval_size_only():
    allowed = {
        "model.name_or_path",
        "paths.data_dir",
        "benchmark.data_dir",
        "benchmark.features",
        "benchmark.allow_partial_train",
        "benchmark.cache_dir",
        "trainer.max_steps",
        "benchmark.max_eval_samples",
        "benchmark.max_new_tokens",
    }
    for profile in rehearse.PROFILES:
        assert rehearse.swapped_keys(profile) <= allowed, profile
        assert all(str(SCRATCH) in o for o in rehearse.overrides(profile, SCRATCH) if "/" in o)  # never results/
    with pytest.raises(ValueError, match=r"unknown profile 'glue_cpu'; expected one of"):
        rehearse.overrides("glue_cpu", SCRATCH)


def test_the_script_rehearses_every_method_of_every_profile():
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    script = (scripts / "rehearse.sh").read_text()
    assert "METHODS=" not in script  # the reproduce scripts' own method lists
    for profile in ("glue", "commonsense", "image-text"):
        assert f"scripts/reproduce-{profile}.sh" in script
        # Each profile launches its NGPUS ranks (2 in the rehearsal) through DeepSpeed's launcher.
        launch = '/deepspeed" --num_gpus "$NGPUS" --module mtllora.train'
        assert launch in (scripts / f"reproduce-{profile}.sh").read_text()
    assert "NGPUS=2" in script and "SEEDS=1" in script
