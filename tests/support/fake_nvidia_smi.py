"""A stand-in for `nvidia-smi` on a machine without a GPU: it represents a GPU machine in tests.

`install(bin_dir, state)` writes an executable `bin_dir/nvidia-smi` (this file, run by the test
interpreter) and its state `bin_dir/nvidia-smi.json`; put `bin_dir` first on the PATH of the
environment under test. It answers the queries `core.gpu` makes, in nvidia-smi's documented
`--format=csv,noheader,nounits` output (values separated by ", ", as nvidia-smi prints them):

    nvidia-smi --query-gpu=FIELD[,FIELD...] --format=csv,noheader,nounits
    nvidia-smi --query-compute-apps=FIELD[,FIELD...] --format=csv,noheader,nounits
    nvidia-smi                      (the banner with "Driver Version" and "CUDA Version")

State (JSON): {"driver": "535.104.05", "cuda": "12.2",
               "gpus": [{"uuid", "name", "memory_total", "memory_used", "compute_cap"}],
               "processes": [{"pid", "gpu_uuid", "used_memory", "process_name"}],
               "unsupported_fields": ["compute_cap"],   # like drivers older than 510
               "fail": "NVIDIA-SMI has failed because ...", "hang": false}
Every invocation is appended to `bin_dir/nvidia-smi.calls` (one JSON argv per line).
The module imports only the standard library.
"""
from __future__ import annotations

import json
import os
import sys
import time

GPU_VALUES = {
    "index": lambda i, g, s: str(i),
    "uuid": lambda i, g, s: g["uuid"],
    "gpu_uuid": lambda i, g, s: g["uuid"],
    "name": lambda i, g, s: g["name"],
    "gpu_name": lambda i, g, s: g["name"],
    "memory.total": lambda i, g, s: str(g["memory_total"]),
    "memory.used": lambda i, g, s: str(g["memory_used"]),
    "memory.free": lambda i, g, s: str(g["memory_total"] - g["memory_used"]),
    "compute_cap": lambda i, g, s: g.get("compute_cap", "[N/A]"),
    "driver_version": lambda i, g, s: s["driver"],
    "pci.bus_id": lambda i, g, s: f"00000000:{i + 1:02X}:00.0",
}
APP_VALUES = {
    "pid": lambda p: str(p["pid"]),
    "gpu_uuid": lambda p: p["gpu_uuid"],
    "used_memory": lambda p: str(p["used_memory"]) if p.get("used_memory") is not None else "[N/A]",
    "used_gpu_memory": lambda p: str(p["used_memory"]) if p.get("used_memory") is not None else "[N/A]",
    "process_name": lambda p: p["process_name"],
}


def install(bin_dir, state: dict) -> str:
    """Write `bin_dir/nvidia-smi` and its state; returns the executable's path."""
    bin_dir = os.fspath(bin_dir)
    os.makedirs(bin_dir, exist_ok=True)
    exe = os.path.join(bin_dir, "nvidia-smi")
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    with open(exe, "w", encoding="utf-8") as f:
        f.write(f"#!{sys.executable} -IS\n" + source)
    os.chmod(exe, 0o755)
    write_state(bin_dir, state)
    return exe


def write_state(bin_dir, state: dict) -> None:
    with open(os.path.join(os.fspath(bin_dir), "nvidia-smi.json"), "w", encoding="utf-8") as f:
        json.dump(state, f)


def calls(bin_dir) -> list:
    """The argv lists the stand-in was called with, oldest first."""
    path = os.path.join(os.fspath(bin_dir), "nvidia-smi.calls")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _banner(state: dict) -> str:
    lines = [time.strftime("%a %b %d %H:%M:%S %Y"),
             "+" + "-" * 87 + "+",
             f"| NVIDIA-SMI {state['driver']:<22}Driver Version: {state['driver']:<14}"
             f"CUDA Version: {state['cuda']:<9}|",
             "|" + "-" * 41 + "+" + "-" * 22 + "+" + "-" * 22 + "+"]
    for i, g in enumerate(state["gpus"]):
        lines.append(f"| {i:>3}  {g['name']:<36}|  {g['memory_used']:>6}MiB / {g['memory_total']:>6}MiB |")
    lines.append("+" + "-" * 87 + "+")
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    here = os.path.dirname(os.path.realpath(argv[0]))
    with open(os.path.join(here, "nvidia-smi.calls"), "a", encoding="utf-8") as f:
        f.write(json.dumps(argv[1:]) + "\n")
    with open(os.path.join(here, "nvidia-smi.json"), encoding="utf-8") as f:
        state = json.load(f)
    if state.get("hang"):
        time.sleep(3600)
    if state.get("fail"):
        print(state["fail"])
        return 9
    args = argv[1:]
    if not args:
        sys.stdout.write(_banner(state))
        return 0
    query = next((a for a in args if a.startswith(("--query-gpu=", "--query-compute-apps="))), None)
    fmt = next((a for a in args if a.startswith("--format=")), None)
    if query is None or fmt != "--format=csv,noheader,nounits" or len(args) != 2:
        print(f"Invalid combination of input arguments: {' '.join(args)}. Please run 'nvidia-smi -h' for help.")
        return 2
    kind, fields = query.split("=", 1)
    fields = fields.split(",")
    table = GPU_VALUES if kind == "--query-gpu" else APP_VALUES
    for name in fields:
        if name not in table or name in state.get("unsupported_fields", ()):
            print(f'Field "{name}" is not a valid field to query.\n')
            return 2
    if kind == "--query-gpu":
        for i, g in enumerate(state["gpus"]):
            print(", ".join(table[n](i, g, state) for n in fields))
    else:
        for p in state.get("processes", ()):
            print(", ".join(table[n](p) for n in fields))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
