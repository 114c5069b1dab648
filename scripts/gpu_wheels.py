"""Python wheels for the device machine: built here, installed there (the GPU check's set-up, not part of the check).

    bash scripts/build-gpu-wheels.sh                      # here, with network: fills .gpu-wheels/
    python scripts/gpu_wheels.py install --target DIR     # there: installs what the machine lacks into DIR

The device machine has torch and transformers but not everything the engine imports (hydra, DeepSpeed, datasets,
...), and nothing can be fetched there. `build` downloads (or builds) Python 3.12 x86-64 wheels of CARRIED at this
environment's versions; `install` installs those the machine lacks, or holds at a version the carried packages do
not accept, into a folder to put first on PYTHONPATH (never torch or transformers, which stay the machine's own).
`scripts/gpu-check.sh` runs `install` where the wheel folder is present. Imports only the standard library (and
`packaging`, or pip's copy of it), so that it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

DEFAULT_WHEELS = Path(__file__).resolve().parents[1] / ".gpu-wheels"

# What the device machine lacks (KINDS.md's package list) that the engine imports, with what those need in turn.
# Versions are taken from the environment that builds the folder (the project's pins). fsspec, typing-extensions
# and tqdm are there too, since datasets and pydantic accept only a range of them: each is installed there only
# when the machine's own is outside that range.
CARRIED = [
    "hydra-core",
    "omegaconf",
    "antlr4-python3-runtime",
    "datasets",
    "dill",
    "multiprocess",
    "fsspec",
    "deepspeed",
    "hjson",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "tqdm",
]
BUILT_FROM_SOURCE = {"antlr4-python3-runtime", "deepspeed"}  # sdist-only (antlr4 4.9.3) or built without its ops
NEVER_INSTALL = {"torch", "transformers", "triton", "accelerate", "peft", "numpy"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]


def dist_name(name: str) -> str:
    """The normalised form of a distribution name (PEP 503), as wheel files and requirements are compared."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_dist(path: Path) -> tuple[str, str]:
    """(normalised distribution name, version) of a wheel file name."""
    name, version = path.name.split("-")[:2]
    return dist_name(name), version


def wheel_requirements(path: Path) -> list[str]:
    """The Requires-Dist lines of a wheel without extras."""
    with zipfile.ZipFile(path) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    reqs = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]
    return [r for r in reqs if "extra ==" not in r]


def installed_version(name: str) -> str | None:
    """The version of distribution `name` in this environment, None where it is not installed."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_wheels(dest: Path) -> None:
    """Fills `dest` with Python 3.12 wheels of CARRIED at this environment's versions (pure-python where the
    package is; manylinux x86-64 cp312 otherwise); deepspeed and antlr4 are built here as pure-python wheels."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = {}
    for name in CARRIED:
        version = installed_version(name)
        if version is None:
            raise SystemExit(f"{name} is not installed in {sys.executable}: run this with the project's venv")
        pins[name] = version
    wanted = {(dist_name(n), v) for n, v in pins.items()}
    for old in dest.glob("*.whl"):
        if wheel_dist(old) not in wanted:
            old.unlink()  # keep one version of each: two would stop the install there
    pip = [sys.executable, "-m", "pip"]
    binary = [f"{n}=={v}" for n, v in pins.items() if n not in BUILT_FROM_SOURCE]
    platform_args = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation"]
    subprocess.run([*cmd, "cp", *platform_args, "-d", str(dest), *binary], check=True)
    env = {**os.environ, "DS_BUILD_OPS": "0"}  # deepspeed: no precompiled ops; they are JIT-built where needed
    source = [f"{n}=={v}" for n, v in pins.items() if n in BUILT_FROM_SOURCE]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), *source], check=True, env=env)
    for wheel in sorted(dest.glob("*.whl")):
        python_tag, _, platform_tag = wheel.stem.split("-")[-3:]
        if python_tag not in ("py3", "py312", "cp312", "py2.py3") or not (
            platform_tag == "any" or "x86_64" in platform_tag
        ):
            raise SystemExit(f"{wheel.name} is not a Python 3.12 x86-64 wheel")
    total = sum(w.stat().st_size for w in dest.glob("*.whl"))
    print(f"{len(list(dest.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {dest}")


def plan_install(wheels: list[Path]) -> tuple[list[Path], list[str], list[str]]:
    """Returns (wheels to install, lines on what is kept, warnings): a carried distribution is installed when the
    machine lacks it, or when a carried package that is being installed excludes the machine's version of it
    (repeated until nothing changes, so a package the machine already has never pulls in the carried pins)."""
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:  # pip carries its own copy
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.version import Version

    carried = {wheel_dist(w)[0]: w for w in wheels}
    bad = sorted(set(carried) & NEVER_INSTALL)
    if bad:
        raise SystemExit(f"the wheel folder holds {bad}: the machine's own must be used, remove them")
    requires: dict[str, list[tuple[str, Any]]] = {}  # carried package -> [(dependency, specifier)]
    for name, wheel in carried.items():
        for line in wheel_requirements(wheel):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate():
                requires.setdefault(name, []).append((dist_name(req.name), req.specifier))
    have = {name: installed_version(name) for name in carried}
    chosen = {name for name in carried if have[name] is None}
    why: dict[str, list[str]] = {}
    changed = True
    while changed:
        changed = False
        for who in sorted(chosen):
            for dep, spec in requires.get(who, []):
                if dep in carried and dep not in chosen and not spec.contains(Version(have[dep]), prereleases=True):
                    chosen.add(dep)
                    why.setdefault(dep, []).append(f"{who} needs {dep}{spec}")
                    changed = True
    kept = [
        f"{name} {have[name]} replaced by the carried {wheel_dist(carried[name])[1]} ({'; '.join(why[name])})"
        if name in chosen
        else f"{name} {have[name]} (machine's own)"
        for name in sorted(carried)
        if have[name] is not None
    ]
    # What the installed packages need that neither the machine nor the folder provides: reported, not fixed.
    warnings = []
    for who in sorted(chosen):
        for dep, spec in requires.get(who, []):
            if dep in carried:
                continue
            version = installed_version(dep)
            if version is None:
                warnings.append(f"{who} needs {dep}{spec}, which the machine lacks")
            elif not spec.contains(Version(version), prereleases=True):
                warnings.append(f"{who} needs {dep}{spec}, the machine has {version}")
    return [carried[name] for name in sorted(chosen)], kept, warnings


def install_wheels(wheel_dir: Path, target: Path) -> dict[str, Any]:
    """Installs the planned wheels into `target` (no index, no dependencies, never torch/transformers)."""
    wheels = sorted(wheel_dir.glob("*.whl"))
    install, kept, warnings = plan_install(wheels)
    for line in kept + [f"WARNING: {w}" for w in warnings]:
        print(line, flush=True)
    if install:
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        cmd += ["--no-cache-dir", "--upgrade", "--target", str(target), *map(str, install)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return {"installed": [w.name for w in install], "kept": kept, "warnings": warnings, "target": str(target)}


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="gpu_wheels", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the wheel folder for the device machine (here, with network)")
    b.add_argument("--dest", type=Path, default=DEFAULT_WHEELS)
    i = sub.add_parser("install", help="install the carried wheels the machine lacks (on the device machine)")
    i.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS)
    i.add_argument("--target", type=Path, required=True)
    i.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)
    if args.command == "build":
        build_wheels(args.dest)
        return 0
    summary = install_wheels(args.wheels, args.target)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
