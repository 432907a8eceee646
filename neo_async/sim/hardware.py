"""Hardware profiles (`hardware_profiles/*.toml`, shipped inside the package): accelerators, host
machines and the global calibration factors of the roofline model."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

HARDWARE_DIR = Path(__file__).resolve().parent / "hardware_profiles"
PCIE_GBS_PER_LANE = {3: 0.985, 4: 1.969, 5: 3.938}  # per direction, after 128b/130b encoding


@dataclass(frozen=True)
class Gpu:
    name: str
    tflops: float  # dense bf16/fp16 tensor peak
    memory_gbs: float
    memory_gib: float  # exposed by the driver
    pcie_gen: int
    pcie_lanes: int
    nvlink_gbs: float  # per direction; 0 = none
    # what a large dense GEMM sustains when the board's power cap lowers its clocks (measured,
    # public); no tensor work runs faster. 0: no cap known (the datasheet peak x efficiency holds)
    sustained_tflops: float = 0.0

    @property
    def pcie_gbs(self) -> float:
        return PCIE_GBS_PER_LANE[self.pcie_gen] * self.pcie_lanes


@dataclass(frozen=True)
class Host:
    name: str
    vcpus: int
    memory_gib: float
    socket_gbs: float  # memory channels' peak per socket
    sockets: int
    per_core_gbs: float
    smt: int = 2  # vCPUs per physical core
    # chiplet CPUs: cores per compute die and the read bandwidth of one die's link to the memory
    # controllers; a VM's cores span at least ceil(cores / ccd_cores) dies. 0: no such bound
    ccd_cores: int = 0
    ccd_gbs: float = 0.0

    @property
    def memory_gbs(self) -> float:
        return self.socket_gbs * self.sockets

    def read_gbs(self, threads: int, stream_efficiency: float) -> float:
        """Read bandwidth `threads` vCPUs sustain: bounded by their cores, by the links of the
        fewest compute dies those cores fit on, and by the channels."""
        cores = -(-threads // self.smt)
        gbs = min(self.memory_gbs * stream_efficiency, cores * self.per_core_gbs)
        if self.ccd_cores and self.ccd_gbs:
            gbs = min(gbs, -(-cores // self.ccd_cores) * self.ccd_gbs)
        return gbs


@dataclass(frozen=True)
class Calibration:
    matmul_efficiency: float
    memory_efficiency: float
    attention_efficiency: float
    layer_overhead_s: float
    iteration_overhead_s: float
    memory_fraction: float
    reserve_gib: float
    pcie_efficiency: float
    copy_latency_s: float
    nvlink_efficiency: float
    allreduce_latency_s: float
    kernel_bandwidth_efficiency: float
    kernel_gflops_per_thread: float
    stream_efficiency: float
    call_overhead_s: float
    reserved_vcpus: int
    host_memory_fraction: float


def _read(name: str, directory: Path) -> dict:
    with open(directory / name, "rb") as f:
        return tomllib.load(f)


def _pick(table: dict, name: str, what: str) -> dict:
    for key, value in table.items():
        if key.lower() == name.lower():
            return {"name": key, **value}
    raise ValueError(f"unknown {what} {name!r}; known: {', '.join(table)}")


def load_gpu(name: str, directory: Path = HARDWARE_DIR) -> Gpu:
    return Gpu(**_pick(_read("gpus.toml", directory), name, "GPU"))


def load_host(name: str, directory: Path = HARDWARE_DIR) -> Host:
    return Host(**_pick(_read("hosts.toml", directory), name, "host"))


def load_calibration(directory: Path = HARDWARE_DIR) -> Calibration:
    data = _read("calibration.toml", directory)
    host = dict(data["host"])
    host["host_memory_fraction"] = host.pop("memory_fraction")
    return Calibration(**data["device"], **data["link"], **host)


def gpu_names(directory: Path = HARDWARE_DIR) -> list[str]:
    return list(_read("gpus.toml", directory))


def host_names(directory: Path = HARDWARE_DIR) -> list[str]:
    return list(_read("hosts.toml", directory))
