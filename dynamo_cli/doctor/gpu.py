"""GPUs through NVML (count, model, memory, driver, CUDA version) and whether the profile's GPU lists fit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dynamo_cli.config.gpus import parse_gpu_list
from dynamo_cli.config.models import WorkerGroupConfig
from dynamo_cli.doctor.checks import Context, Result
from dynamo_cli.errors import UsageError

GIB = 1 << 30
_ABSENT = ("LibraryNotFound", "DriverNotLoaded", "NoPermission")  # NVML errors meaning "no usable GPU"


@dataclass(frozen=True)
class Gpu:
    name: str
    total: int  # bytes
    free: int


@dataclass(frozen=True)
class GpuInventory:
    gpus: list[Gpu] = field(default_factory=list)
    driver: str | None = None
    cuda: str | None = None  # the newest CUDA the driver supports, "12.4"
    error: str | None = None  # why NVML gave no answer
    absent: bool = False  # the error means "no NVIDIA GPU or driver here"

    @property
    def count(self) -> int:
        return len(self.gpus)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def query_nvml(nvml: Any) -> GpuInventory:
    try:
        nvml.nvmlInit()
    except Exception as e:
        kind = type(e).__name__
        return GpuInventory(error=f"{kind}: {e}", absent=any(a in kind for a in _ABSENT))
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(Gpu(_text(nvml.nvmlDeviceGetName(handle)), int(mem.total), int(mem.free)))
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda_int = int(nvml.nvmlSystemGetCudaDriverVersion())  # 12040 -> 12.4
        return GpuInventory(gpus, driver, f"{cuda_int // 1000}.{cuda_int % 1000 // 10}")
    except Exception as e:
        return GpuInventory(error=f"{type(e).__name__}: {e}")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def inventory(ctx: Context) -> GpuInventory:
    """This machine's GPUs, asked once per doctor run."""

    def ask() -> GpuInventory:
        if ctx.nvml is not None:
            return query_nvml(ctx.nvml)
        try:
            import pynvml
        except ImportError:
            return GpuInventory(error="nvidia-ml-py is not installed", absent=True)
        return query_nvml(pynvml)

    result: GpuInventory = ctx.once("gpus", ask)
    return result


def describe(inv: GpuInventory) -> str:
    """'2 x NVIDIA H100 80GB HBM3 (79.6 GiB, >= 79.1 GiB free), driver 550.54.15, CUDA 12.4'."""
    kinds = Counter((g.name, round(g.total / GIB, 1)) for g in inv.gpus)
    parts = []
    for (name, total), n in kinds.items():
        free = min(g.free for g in inv.gpus if g.name == name) / GIB
        parts.append(f"{n} x {name} ({total:g} GiB, {'>= ' if n > 1 else ''}{free:.1f} GiB free)")
    return f"{'; '.join(parts)}, driver {inv.driver}, CUDA {inv.cuda}"


def check_gpus(ctx: Context) -> Iterator[Result]:
    inv = inventory(ctx)
    vllm = ctx.cfg.engine == "vllm"
    visible = ctx.environ.get("CUDA_VISIBLE_DEVICES")
    note = f" (CUDA_VISIBLE_DEVICES={visible} in this shell)" if visible is not None else ""
    if inv.count:
        yield Result("gpus", "PASS", describe(inv) + note)
    elif inv.error and not inv.absent:
        yield Result(
            "gpus",
            "WARN" if vllm else "INFO",
            f"NVML could not list the GPUs ({inv.error})",
            "run `nvidia-smi`; a driver/library version mismatch needs a reboot or a driver reinstall",
        )
    elif vllm:
        yield Result(
            "gpus",
            "WARN",
            "no NVIDIA GPU/driver found: vLLM will run on CPU",
            "fine for small models; for GPUs install the NVIDIA driver (`nvidia-smi` must list them)",
        )
    else:
        yield Result("gpus", "INFO", "no NVIDIA GPU/driver found; the mocker engine needs none")


def _groups(ctx: Context) -> list[tuple[str, WorkerGroupConfig]]:
    cfg = ctx.cfg
    out = [("workers", cfg.workers)]
    if cfg.prefill_workers.size:
        out.append(("prefill_workers", cfg.prefill_workers))
    return out


def check_gpu_lists(ctx: Context) -> Iterator[Result]:
    """Every GPU a group names exists and the groups split evenly; the checks `dynamo run` makes at start."""
    from dynamo_cli.deployment.placement import worker_envs

    groups = _groups(ctx)
    listed = [(key, g) for key, g in groups if g.gpus]
    inv = inventory(ctx)
    if not listed:
        workers = sum(g.size for _, g in groups)
        if ctx.cfg.engine == "vllm" and inv.count and workers > 1:
            yield Result(
                "gpu lists",
                "WARN",
                f"the profile lists no GPUs: all {workers} vLLM workers will load onto GPU 0",
                f"give each group its GPUs, e.g. --gpus 0-{inv.count - 1} (--prefill-gpus for disagg)",
            )
        else:
            where = "" if inv.count else " (workers run on CPU)" if ctx.cfg.engine == "vllm" else ""
            yield Result("gpu lists", "PASS" if inv.count else "INFO", f"the profile lists no GPUs{where}")
        return
    fits: list[str] = []
    owner: dict[int, str] = {}  # GPU id -> the group that lists it
    for key, group in listed:
        try:
            worker_envs(group, key, engine=ctx.cfg.engine, available_gpus=inv.count)
        except UsageError as e:
            yield Result("gpu lists", "FAIL", e.message, e.hint)
            return
        ids = parse_gpu_list(group.gpus or "")
        shared = sorted(set(ids) & set(owner))
        if shared:
            yield Result(
                "gpu lists",
                "WARN",
                f"GPU {shared[0]} is in both {owner[shared[0]]}.gpus and {key}.gpus: two engines share it",
                "give the groups disjoint GPU lists",
            )
            return
        owner.update(dict.fromkeys(ids, key))
        fits.append(f"{key} {group.gpus} ({group.size} worker(s) x {len(ids) // group.size} GPU)")
    yield Result("gpu lists", "PASS", "; ".join(fits))
