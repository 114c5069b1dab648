"""The device check (`bash scripts/gpu-check.sh`, docs/gpu-check.md) as tests marked `gpu`: deselected from the
default run (pyproject's addopts), run by the script with `-m gpu`; CPU mode where there is no CUDA."""
