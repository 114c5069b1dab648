"""AdapterHub worker: measures AdapterHub's LoRA and MTL-LoRA in AdapterHub's own virtual environment.

`adapters==1.3.0` needs `transformers~=4.57.6`, which cannot share an environment with this project's pins, so
the benchmark runs this file with that environment's Python: `python adapterhub_worker.py SPEC.json OUT.json`.
It imports only torch, transformers, adapters and the sibling `harness.py` (mtllora is not installed there), runs
the same model-level steps as the main process (same batches, same timing harness) for three rows: the frozen
base, AdapterHub LoRA, and AdapterHub MTL-LoRA used as documented (one `MTLLoRAConfig` adapter per task,
`share_parameters`, `MultiTask` composition, `task_ids=` in forward), and writes the results as JSON.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import measure, peak_step_memory, perturb_trainable


def _template(name: str, spec: dict):
    """Returns the frozen model `name` on CPU in fp32 (rows move it to the device after adding adapters)."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if name == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(spec["minilm_path"], num_labels=2)
    return LlamaForCausalLM(LlamaConfig(**spec["llama_config"]))


def _rows(template, spec: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """Returns {row key: (model, needs task ids)} for the frozen base, AdapterHub LoRA and MTL-LoRA."""
    import adapters.composition as ac

    import adapters
    from adapters import LoRAConfig, MTLLoRAConfig

    # q, k, v plus the feed-forward input and output projections, as the main process's model-level targets.
    where = {"attn_matrices": ["q", "k", "v"], "selfattn_lora": True, "intermediate_lora": True, "output_lora": True}
    rows = {}
    base_names = {name for name, _ in template.named_parameters()}
    base = copy.deepcopy(template).requires_grad_(False)
    rows["adapterhub_base"] = (base, False)

    lora = copy.deepcopy(template)
    adapters.init(lora)
    lora.add_adapter("lora", LoRAConfig(r=spec["r"], alpha=spec["alpha"], **where))
    lora.train_adapter("lora")
    rows["adapterhub_lora"] = (lora, False)

    mtl = copy.deepcopy(template)
    adapters.init(mtl)
    config = MTLLoRAConfig(
        r=spec["r"],
        alpha=spec["alpha"],
        n_up_projection=spec["num_up"],
        weights_sharpness=spec["temperature"],
        **where,
    )
    names = [f"task{t}" for t in range(spec["num_tasks"])]
    for name in names:
        mtl.add_adapter(name, config)
    mtl.share_parameters(adapter_names=names)
    mtl.train_adapter(ac.MultiTask(*names))
    rows["adapterhub_mtl_lora"] = (mtl, True)

    for seed, (model, _) in enumerate(rows.values()):
        # train_adapter leaves a classification head trainable; only the adapters train in every row.
        for name, param in model.named_parameters():
            if name in base_names:
                param.requires_grad_(False)
        model.to(device, dtype).train()
        model.enable_input_require_grads()
        perturb_trainable(model, seed)
    return rows


def _step(model, batch: dict, kwargs: dict):
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        model(**batch, **kwargs).loss.backward()
        for p in params:
            p.grad = None

    return step


def main(argv: list[str]) -> int:
    """Runs the measurements described by SPEC.json and writes OUT.json; returns the exit status."""
    spec_path, out_path = (Path(a) for a in argv)
    spec = json.loads(spec_path.read_text())
    import transformers
    from transformers.utils import logging as hf_logging

    import adapters

    hf_logging.set_verbosity_error()
    torch.set_num_threads(spec["threads"])
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    batches = torch.load(spec["batches"])
    result = {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "adapters": adapters.__version__,
        },
        "suites": {},
    }
    for name in spec["suites"]:
        batch = {k: v.to(device) for k, v in batches[name].items()}
        task_ids = torch.arange(batch["input_ids"].shape[0], device=device) % spec["num_tasks"]
        rows = _rows(_template(name, spec), spec, device, dtype)
        steps = {
            key: _step(model, batch, {"task_ids": task_ids} if task_aware else {})
            for key, (model, task_aware) in rows.items()
        }
        # As in the main process: the first call profiled for memory, then the timed repeats.
        first_call_s, peaks = {}, {}
        for key, step in steps.items():
            start = time.perf_counter()
            peaks[key] = peak_step_memory(step, device)
            first_call_s[key] = time.perf_counter() - start
        stats = measure(
            steps,
            first_call_s,
            spec["repeats"],
            spec["min_sample_s"],
            extra_budget_s=spec["extra_budget_s"],
            retake_budget_s=spec["retake_budget_s"],
        )
        result["suites"][name] = {
            key: {
                **stats[key].to_dict(),
                "peak_mem_bytes": peaks[key],
                "trainable_params": sum(p.numel() for p in rows[key][0].parameters() if p.requires_grad),
            }
            for key in rows
        }
        del rows, steps
    out_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
