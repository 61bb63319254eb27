"""``harness bench``: time one training step of every registered model, with nothing else around it.

For every model and length a :class:`~harness.model_api.TaskModel` (``readout="last"``, a head of
``OUTPUT_SIZE`` classes, cross-entropy on random targets) is trained on random inputs of shape
``(batch, length, input_size)``: forward, backward, gradient-norm clipping and an Adam step, the
same four things a trial does every step (no task data, no evaluation). Each model gets
``warmup`` untimed steps; then ``repeats`` timed rounds run the models round-robin, one step each,
followed by the GEMMs of the floor, so a change in the machine's load during the benchmark falls on
every model and on the floor alike; the reported time is each model's median step, with the
fastest and slowest step beside it. The model registered as the reference (``reference=True``; the
built-in plugins register the fused ``torch.nn.LSTM``) is always timed, and ratios are taken to it.

The floor (:mod:`harness.runs.floor`) is the time of a model's own matrix products, derived from its
parameter shapes, as large single GEMMs on the same threads in the same rounds; the ratio of the
median step to the median floor says how far a model is from what the machine's arithmetic allows.
One torch thread per process by default: the configuration of ``harness run --workers N`` on N
cores, and far steadier on a shared machine than every core.

Peak memory:

- CPU: for each (model, length) a fresh child process (same interpreter, plugins, allocator
  settings and threads) builds the model, reads its resident set size (``VmRSS``), runs
  ``warmup + 1`` steps, and reports the growth of the peak resident set size (``VmHWM`` in
  ``/proc/self/status``) over that baseline: what the training steps cost the process, including
  memory the allocator keeps instead of returning (see ``harness.runs.allocator``). A fresh process
  per measurement is needed because a process's peak never goes down and freed memory may stay
  mapped. Where ``/proc`` is missing (not Linux), ``ru_maxrss`` growth is used instead.
- CUDA: ``torch.cuda.max_memory_allocated`` over the same steps, minus what was allocated before,
  in the benchmarking process (tensors only, not the caching allocator's reserve).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

OUTPUT_SIZE = 8
DEFAULT_LENGTHS = (50, 200, 1000)


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...]
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    batch_size: int = 128
    hidden_size: int = 128
    input_size: int = 10
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 2
    threads: int = 1
    memory: bool = True
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model, one value each
    lr: float = 1e-3
    clip: float = 1.0
    reference: str | None = None  # the model ratios are taken to


@dataclass
class BenchRow:
    model: str
    length: int
    ms_per_step: float | None = None  # median of the timed steps
    ms_min: float | None = None
    ms_max: float | None = None
    ratio_to_reference: float | None = None
    floor_ms: float | None = None  # median over the rounds of the model's GEMM floor
    floor_ms_min: float | None = None
    floor_ms_max: float | None = None
    ratio_to_floor: float | None = None  # ms_per_step / floor_ms
    cpu_ms_per_step: float | None = None  # median CPU time of this process per step
    floor_cpu_ms: float | None = None
    cpu_ratio_to_floor: float | None = None  # the same ratio in CPU time: steadier on a shared machine
    floor_gflop: float | None = None  # flops of the floor's products per training step
    floor_note: str = ""  # what the floor leaves out, or "n/a: why"
    implementation: str = ""  # the model's own ``implementation`` attribute, if it has one
    peak_memory_mb: float | None = None
    times_ms: list[float] = field(default_factory=list)
    floor_times_ms: list[float] = field(default_factory=list)
    cpu_times_ms: list[float] = field(default_factory=list)
    floor_cpu_times_ms: list[float] = field(default_factory=list)
    error: str = ""


# --------------------------------------------------------------------------------------------
# one model's training step
# --------------------------------------------------------------------------------------------

class _Subject:
    """A model, its optimizer and a fixed random batch: ``step()`` is one timed training step."""

    def __init__(self, name: str, config: BenchConfig, length: int) -> None:
        import torch

        from harness.model_api import TaskModel
        from harness.registry.loader import get_model
        from harness.runs.floor import find_products
        from harness.runs.options import build_core

        self.device = torch.device(config.device)
        torch.manual_seed(0)
        core = build_core(get_model(name), config.input_size, config.hidden_size, length,
                          config.model_options.get(name, {}))
        self.model = TaskModel(core, OUTPUT_SIZE, "last").to(self.device)
        self.products = find_products(core, config.hidden_size)
        self.implementation = str(getattr(core, "implementation", "") or "")
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.lr)
        self.clip = config.clip
        generator = torch.Generator(device=self.device).manual_seed(1)
        self.inputs = torch.randn(config.batch_size, length, config.input_size, generator=generator,
                                  device=self.device)
        self.targets = torch.randint(0, OUTPUT_SIZE, (config.batch_size,), generator=generator,
                                     device=self.device)

    def step(self) -> None:
        import torch

        loss = torch.nn.functional.cross_entropy(self.model(self.inputs), self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        self.optimizer.step()

    def timed_step(self) -> tuple[float, float]:
        """Wall-clock and CPU seconds (this process) for one step, the device synchronised on both sides."""
        from harness.runs.environment import synchronize

        synchronize(self.device)
        start, cpu = time.perf_counter(), time.process_time()
        self.step()
        synchronize(self.device)
        return time.perf_counter() - start, time.process_time() - cpu


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


# --------------------------------------------------------------------------------------------
# timing: every model of one length in this process, round-robin
# --------------------------------------------------------------------------------------------

def time_length(config: BenchConfig, length: int, progress=None) -> list[BenchRow]:
    """Every model at one length: warm-up, then ``repeats`` rounds of one step each and the floor's GEMMs."""
    from harness.runs.floor import GemmTimer

    rows = {name: BenchRow(name, length) for name in config.models}
    subjects: dict[str, _Subject] = {}
    for name in config.models:
        try:
            subjects[name] = _Subject(name, config, length)
            rows[name].implementation = subjects[name].implementation
            for _ in range(config.warmup):
                subjects[name].step()
        except Exception as exc:  # a broken third-party model must not end the benchmark
            rows[name].error = _describe(exc)
            subjects.pop(name, None)
        if progress:
            progress(f"T={length} {name}: warmed up" if name in subjects else
                     f"T={length} {name}: failed: {rows[name].error}")
    products = {name: subject.products for name, subject in subjects.items()}
    shapes = [shape for found in products.values() for shape in found.shapes]
    timer = GemmTimer(config.batch_size * length, device=config.device)
    if config.warmup:
        timer.time_round(shapes)
        timer.clear()
    for _ in range(config.repeats):
        for name in list(subjects):
            try:
                wall, cpu = subjects[name].timed_step()
                rows[name].times_ms.append(wall * 1e3)
                rows[name].cpu_times_ms.append(cpu * 1e3)
            except Exception as exc:
                rows[name].error = _describe(exc)
                del subjects[name]
        timer.time_round(shapes)
    subjects.clear()
    for name, row in rows.items():
        if name in products:
            _set_floor(row, products[name], timer, config.batch_size * length)
        if row.times_ms and not row.error:
            row.ms_per_step = statistics.median(row.times_ms)
            row.ms_min, row.ms_max = min(row.times_ms), max(row.times_ms)
            row.cpu_ms_per_step = statistics.median(row.cpu_times_ms)
            if row.floor_ms:
                row.ratio_to_floor = row.ms_per_step / row.floor_ms
            if row.floor_cpu_ms:
                row.cpu_ratio_to_floor = row.cpu_ms_per_step / row.floor_cpu_ms
    reference = rows.get(config.reference) if config.reference else None
    if reference is not None and reference.ms_per_step:
        for row in rows.values():
            if row.ms_per_step is not None:
                row.ratio_to_reference = row.ms_per_step / reference.ms_per_step
    return list(rows.values())


def _set_floor(row: BenchRow, products: Any, timer: Any, positions: int) -> None:
    row.floor_note = products.note
    if not products.shapes:
        return
    row.floor_gflop = products.flops(positions) / 1e9
    row.floor_times_ms = [s * 1e3 for s in timer.floor_seconds(products)]
    row.floor_cpu_times_ms = [s * 1e3 for s in timer.floor_seconds(products, cpu=True)]
    if row.floor_times_ms:
        row.floor_ms = statistics.median(row.floor_times_ms)
        row.floor_ms_min, row.floor_ms_max = min(row.floor_times_ms), max(row.floor_times_ms)
        row.floor_cpu_ms = statistics.median(row.floor_cpu_times_ms)


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------

def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rusage_peak_kib() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def measure_peak_here(name: str, config: BenchConfig, length: int) -> float:
    """Peak memory growth in MiB of ``warmup + 1`` training steps, measured in this process."""
    import torch

    subject = _Subject(name, config, length)
    steps = config.warmup + 1
    if subject.device.type == "cuda":
        from harness.runs.environment import synchronize

        synchronize(subject.device)
        torch.cuda.reset_peak_memory_stats(subject.device)
        before = torch.cuda.memory_allocated(subject.device)
        for _ in range(steps):
            subject.step()
        synchronize(subject.device)
        return (torch.cuda.max_memory_allocated(subject.device) - before) / 2**20
    rss = _status_kib("VmRSS")
    if rss is not None:
        for _ in range(steps):
            subject.step()
        return ((_status_kib("VmHWM") or rss) - rss) / 1024
    before = _rusage_peak_kib()
    for _ in range(steps):
        subject.step()
    return (_rusage_peak_kib() - before) / 1024


def measure_peak_in_child(name: str, config: BenchConfig, length: int, timeout: float = 900) -> float:
    """:func:`measure_peak_here` in a fresh interpreter (same import path, plugins, environment)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[variable] = str(config.threads)
    payload = json.dumps({"name": name, "length": length, "config": asdict(config)})
    completed = subprocess.run([sys.executable, "-m", "harness.runs.bench", "--memory-probe", payload],
                               capture_output=True, text=True, env=env, timeout=timeout)
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("{"):
            answer = json.loads(line)
            if "error" in answer:
                raise RuntimeError(answer["error"])
            return float(answer["peak_mb"])
    tail = (completed.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"memory probe exited with status {completed.returncode}: {tail}")


def _memory_probe(payload: str) -> int:
    """Child side of :func:`measure_peak_in_child`: print ``{"peak_mb": ...}`` as the last line."""
    from harness.runs.allocator import tune_malloc

    tune_malloc()  # before torch allocates anything, as in the parent (HARNESS_MALLOC applies)
    request = json.loads(payload)
    raw = request["config"]
    raw["models"] = tuple(raw["models"])
    raw["lengths"] = tuple(raw["lengths"])
    config = BenchConfig(**raw)
    import torch

    torch.set_num_threads(config.threads)
    try:
        peak = measure_peak_here(request["name"], config, int(request["length"]))
    except Exception as exc:
        print(json.dumps({"error": _describe(exc)}))
        return 1
    print(json.dumps({"peak_mb": peak}))
    return 0


# --------------------------------------------------------------------------------------------
# the whole benchmark
# --------------------------------------------------------------------------------------------

def run_bench(config: BenchConfig, progress=None) -> dict[str, Any]:
    """Time (and measure) every model at every length; return a JSON-ready report."""
    import torch

    from harness.runs.allocator import malloc_tuned
    from harness.runs.environment import available_cores, cpu_name

    torch.set_num_threads(config.threads)
    started = time.perf_counter()
    rows: list[BenchRow] = []
    for length in config.lengths:
        rows.extend(time_length(config, length, progress))
    if config.memory:
        on_cuda = config.device.startswith("cuda")
        for row in rows:
            if row.error:
                continue
            try:
                row.peak_memory_mb = (measure_peak_here(row.model, config, row.length) if on_cuda else
                                      measure_peak_in_child(row.model, config, row.length))
            except Exception as exc:
                row.error = f"memory: {_describe(exc)}"
            if progress:
                progress(f"T={row.length} {row.model}: peak memory measured")
    machine = {"device": config.device, "cpu": cpu_name(), "cores": available_cores(),
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": sys.version.split()[0], "malloc_tuned": malloc_tuned()}
    if config.device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name(torch.device(config.device))
    return {"config": asdict(config), "machine": machine, "reference": config.reference,
            "memory_method": _memory_method(config), "seconds": round(time.perf_counter() - started, 1),
            "results": [asdict(row) for row in rows]}


def _memory_method(config: BenchConfig) -> str:
    if not config.memory:
        return "not measured"
    if config.device.startswith("cuda"):
        return "torch.cuda.max_memory_allocated growth over warmup+1 steps"
    return "peak RSS (VmHWM) growth over warmup+1 steps, one fresh process per model and length"


def _number(value: float | None, digits: int | None = None) -> str:
    """A number for the table; times get more decimals the smaller they are (tiny sizes in tests)."""
    if value is None:
        return "-"
    if digits is None:
        digits = 0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3
    return f"{value:.{digits}f}"


def _spread(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{_number(low)}-{_number(high)}"


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table: one block per length, then the notes on floors and errors."""
    config, machine = report["config"], report["machine"]
    lines = [
        f"harness bench: batch {config['batch_size']}, hidden {config['hidden_size']}, input "
        f"{config['input_size']}; forward+backward+clip+Adam; median (min-max) of {config['repeats']} steps "
        f"after {config['warmup']} warm-up steps",
        f"device {machine['device']} ({machine.get('gpu') or machine['cpu']}), {machine['cores']} cores, "
        f"{machine['torch_threads']} torch thread(s), torch {machine['torch']}, "
        f"allocator tuning {'on' if machine['malloc_tuned'] else 'off'}",
        "floor: the model's own matrix products (from its parameter shapes) as one large GEMM each, "
        "forward and both backward, timed in the same rounds; cpu x floor: the same ratio in CPU time "
        "of this process (steadier on a busy machine; with one thread)",
        f"memory: {report['memory_method']}",
        "",
    ]
    header = ("T", "model", "ms/step", "min-max", "floor ms", "x floor", "cpu x floor",
              f"x {report['reference'] or 'ref'}", "peak MiB", "implementation")
    table, notes = [], []
    for row in report["results"]:
        table.append((str(row["length"]), row["model"], _number(row["ms_per_step"]),
                      _spread(row["ms_min"], row["ms_max"]), _number(row["floor_ms"]),
                      _number(row["ratio_to_floor"], 2), _number(row["cpu_ratio_to_floor"], 2),
                      _number(row["ratio_to_reference"], 2),
                      _number(row["peak_memory_mb"], 0), row["implementation"] or "-"))
        for text in (row["floor_note"], row["error"] and f"error: {row['error']}"):
            if text and f"{row['model']}: {text}" not in notes:
                notes.append(f"{row['model']}: {text}")
    widths = [max(len(r[i]) for r in (header, *table)) for i in range(len(header))]
    right = {0, 2, 3, 4, 5, 6, 7, 8}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines.append(fmt(header))
    lines.append("  ".join("-" * w for w in widths))
    previous = None
    for cells in table:
        if previous is not None and cells[0] != previous:
            lines.append("")
        previous = cells[0]
        lines.append(fmt(cells))
    lines.append("")
    lines.extend(notes)
    lines.append(f"({report['seconds']:.0f} s)")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--memory-probe":
        return _memory_probe(argv[1])
    print("usage: harness bench --help (this module's own entry point is internal)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
