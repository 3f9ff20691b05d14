"""What the in-process observer costs: a data-loading loop opening 100,000 small files, the same
loop decoding a small JPEG per file (what a DataLoader does), a loop of training steps, and
interpreter start-up, each with and without the observer.

The floor: any Python audit hook costs one Python call per audited event, whatever it does; the
bare loop is also run with an empty hook so the report separates that floor from the observer's
own work. Training steps raise no audit event at all (counted here), so they cost nothing.

Every measurement is a fresh interpreter (as the runner starts them), alternating with and without;
the loop times are taken inside the process (start-up excluded); min and median of `--repeat`
runs (min is the better estimate on a busy machine). Prints one JSON object.
`--quick`: 10,000 files, 3 repeats.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from observer import OBSERVE_DIR_VAR, SITE_DIR  # noqa: E402

# three epochs over the files; prints the best epoch's wall time, the first epoch's (every folder is
# new to the observer then) and the best epoch's CPU time (less sensitive to a busy machine)
OPEN_LOOP = r'''
import os, sys, time
root = sys.argv[1]
paths = [os.path.join(root, d, f) for d in sorted(os.listdir(root)) for f in sorted(os.listdir(os.path.join(root, d)))]
times, cpu = [], []
for epoch in range(3):
    t, c = time.perf_counter(), time.process_time()
    for p in paths:
        with open(p, "rb") as f:
            f.read()
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
print(min(times), times[0], min(cpu))
'''

DECODE_LOOP = r'''
import os, sys, time
from PIL import Image
root = sys.argv[1]
paths = [os.path.join(root, d, f) for d in sorted(os.listdir(root)) for f in sorted(os.listdir(os.path.join(root, d)))]
paths = paths[:int(sys.argv[2])]
t = time.perf_counter()
n = 0
for p in paths:
    with Image.open(p) as im:
        n += im.convert("RGB").size[0]
print(time.perf_counter() - t, n)
'''

EMPTY_HOOK = "import sys\nsys.addaudithook(lambda event, args: None)\n"

STEP_LOOP = r'''
import sys, time, torch
torch.manual_seed(0)
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
for _ in range(50):
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
steps = int(sys.argv[1])
t = time.perf_counter()
for _ in range(steps):
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
print((time.perf_counter() - t) / steps, steps)
events = []
sys.addaudithook(lambda e, a: events.append(e))
for _ in range(100):
    opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
print(len(events))
'''


def make_files(root: str, count: int, per_folder: int = 100) -> None:
    from PIL import Image

    buf = os.path.join(root, "sample.jpg")
    os.makedirs(root, exist_ok=True)
    Image.new("RGB", (32, 32), (120, 30, 200)).save(buf, "JPEG")
    with open(buf, "rb") as f:
        jpeg = f.read()
    os.unlink(buf)
    for i in range(count):
        d = os.path.join(root, f"{i // per_folder:05d}")
        if i % per_folder == 0:
            os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{i:06d}.jpg"), "wb") as f:
            f.write(jpeg)


def run(code: str, args, observe_dir, site=SITE_DIR):
    env = dict(os.environ)
    env.pop(OBSERVE_DIR_VAR, None)
    if observe_dir:
        os.makedirs(observe_dir, exist_ok=True)
        env["PYTHONPATH"] = os.pathsep.join([site] + [p for p in [env.get("PYTHONPATH")] if p])
        env[OBSERVE_DIR_VAR] = observe_dir
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[0]), time.perf_counter() - t, out


def _pct(a: float, b: float) -> float:
    return round(100 * (b - a) / a, 2)


def compare(code: str, args, repeat: int, tmp: str, name: str, floor_site: str = "") -> dict:
    runs = {"without": [], "with": [], "empty_hook": []}
    walls = {"without": [], "with": []}
    last = None
    for i in range(repeat):
        a, wa, first0 = run(code, args, None)
        b, wb, last = run(code, args, os.path.join(tmp, f"{name}-obs-{i}"))
        if name == "open":
            runs.setdefault("first_epoch_without", []).append(float(first0[1]))
            runs.setdefault("first_epoch_with", []).append(float(last[1]))
            runs.setdefault("cpu_without", []).append(float(first0[2]))
            runs.setdefault("cpu_with", []).append(float(last[2]))
        runs["without"].append(a)
        runs["with"].append(b)
        walls["without"].append(wa)
        walls["with"].append(wb)
        if floor_site:
            runs["empty_hook"].append(run(code, args, os.path.join(tmp, f"{name}-floor-{i}"), floor_site)[0])
    out = {}
    for stat in ("min", "median"):
        f = min if stat == "min" else statistics.median
        m0, m1 = f(runs["without"]), f(runs["with"])
        out[stat] = {"without_s": round(m0, 6), "with_s": round(m1, 6), "overhead_pct": _pct(m0, m1)}
        if floor_site:
            out[stat]["empty_hook_s"] = round(f(runs["empty_hook"]), 6)
            out[stat]["empty_hook_overhead_pct"] = _pct(m0, f(runs["empty_hook"]))
    if "first_epoch_with" in runs:
        m0, m1 = min(runs["first_epoch_without"]), min(runs["first_epoch_with"])
        out["first_epoch_min"] = {"without_s": round(m0, 6), "with_s": round(m1, 6), "overhead_pct": _pct(m0, m1)}
        m0, m1 = min(runs["cpu_without"]), min(runs["cpu_with"])
        out["cpu_time_min"] = {"without_s": round(m0, 6), "with_s": round(m1, 6), "overhead_pct": _pct(m0, m1)}
    out["process_wall_median_s"] = {k: round(statistics.median(v), 3) for k, v in walls.items()}
    out["runs"] = {k: [round(x, 6) for x in v] for k, v in runs.items() if v}
    out["last_output"] = last
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--decode-files", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.files, a.decode_files, a.steps, a.repeat = 10_000, 5_000, 500, 3
    with tempfile.TemporaryDirectory(prefix="bench-observer-") as tmp:
        data, floor = os.path.join(tmp, "data"), os.path.join(tmp, "floor")
        make_files(data, a.files)
        os.makedirs(floor)
        with open(os.path.join(floor, "sitecustomize.py"), "w") as f:
            f.write(EMPTY_HOOK)
        opens = compare(OPEN_LOOP, [data], a.repeat, tmp, "open", floor_site=floor)
        decode = compare(DECODE_LOOP, [data, a.decode_files], a.repeat, tmp, "decode")
        steps = compare(STEP_LOOP, [a.steps], a.repeat, tmp, "step")
        start = compare("import time; print(time.perf_counter())", [], a.repeat, tmp, "start")
        obs = os.path.join(tmp, "open-obs-0")
        lines = sum(1 for f in os.listdir(obs) for _ in open(os.path.join(obs, f)))
    events = int(steps.pop("last_output")[-1])
    for d in (opens, decode, start):
        d.pop("last_output")
    print(json.dumps({"bench": "observer", "files": a.files, "decode_files": a.decode_files, "repeat": a.repeat,
                      "load_average": os.getloadavg()[0], "cpus": os.cpu_count(),
                      "open_loop": opens, "open_loop_observer_lines": lines, "decode_loop": decode,
                      "train_step": dict(steps, steps=a.steps, audit_events_in_100_steps=events),
                      "startup": start["process_wall_median_s"],
                      "goal": "open loop under 2% wall; no measurable cost per training step"}, indent=1))


if __name__ == "__main__":
    main()
