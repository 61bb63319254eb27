"""``harness bench``: time one training step of every registered model, with nothing else around it.

For every model and length a :class:`~harness.model_api.TaskModel` (``readout="last"``, a head of
``OUTPUT_SIZE`` classes, cross-entropy on random targets) is trained on random inputs of shape
``(batch, length, input_size)``: forward, backward, gradient-norm clipping and an Adam step, the
same four things a trial does every step (no task data, no evaluation). Each model gets
``warmup`` untimed steps; then ``repeats`` timed rounds run the models round-robin, one step each,
so a change in the machine's load during the benchmark falls on every model alike; the reported
time is each model's median step. The model registered as the reference (``reference=True``; the
built-in plugins register the fused ``torch.nn.LSTM``) is always timed, and ratios are taken to it.

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
    lr: float = 1e-3
    clip: float = 1.0
    reference: str | None = None  # the model ratios are taken to


@dataclass
class BenchRow:
    model: str
    length: int
    ms_per_step: float | None = None
    ratio_to_reference: float | None = None
    peak_memory_mb: float | None = None
    times_ms: list[float] = field(default_factory=list)
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

        self.device = torch.device(config.device)
        torch.manual_seed(0)
        core = get_model(name).build(input_size=config.input_size, hidden_size=config.hidden_size)
        self.model = TaskModel(core, OUTPUT_SIZE, "last").to(self.device)
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

    def timed_step(self) -> float:
        """Seconds for one step, the device synchronised on both sides."""
        from harness.runs.environment import synchronize

        synchronize(self.device)
        start = time.perf_counter()
        self.step()
        synchronize(self.device)
        return time.perf_counter() - start


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


# --------------------------------------------------------------------------------------------
# timing: every model of one length in this process, round-robin
# --------------------------------------------------------------------------------------------

def time_length(config: BenchConfig, length: int, progress=None) -> list[BenchRow]:
    rows = {name: BenchRow(name, length) for name in config.models}
    subjects: dict[str, _Subject] = {}
    for name in config.models:
        try:
            subjects[name] = _Subject(name, config, length)
            for _ in range(config.warmup):
                subjects[name].step()
        except Exception as exc:  # a broken third-party model must not end the benchmark
            rows[name].error = _describe(exc)
            subjects.pop(name, None)
        if progress:
            progress(f"T={length} {name}: warmed up" if name in subjects else
                     f"T={length} {name}: failed: {rows[name].error}")
    for _ in range(config.repeats):
        for name in list(subjects):
            try:
                rows[name].times_ms.append(subjects[name].timed_step() * 1e3)
            except Exception as exc:
                rows[name].error = _describe(exc)
                del subjects[name]
    subjects.clear()
    for row in rows.values():
        if row.times_ms and not row.error:
            row.ms_per_step = statistics.median(row.times_ms)
    reference = rows.get(config.reference) if config.reference else None
    if reference is not None and reference.ms_per_step:
        for row in rows.values():
            if row.ms_per_step is not None:
                row.ratio_to_reference = row.ms_per_step / reference.ms_per_step
    return list(rows.values())


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


def format_report(report: dict[str, Any]) -> str:
    config, machine = report["config"], report["machine"]
    lines = [
        f"harness bench: batch {config['batch_size']}, hidden {config['hidden_size']}, input "
        f"{config['input_size']}; forward+backward+clip+Adam; median of {config['repeats']} steps "
        f"after {config['warmup']} warm-up steps",
        f"device {machine['device']} ({machine.get('gpu') or machine['cpu']}), {machine['cores']} cores, "
        f"{machine['torch_threads']} torch threads, torch {machine['torch']}, "
        f"allocator tuning {'on' if machine['malloc_tuned'] else 'off'}",
        f"memory: {report['memory_method']}",
        "",
    ]
    header = ("T", "model", "ms/step", f"x {report['reference'] or 'ref'}", "peak MiB", "")
    table = []
    for row in report["results"]:
        table.append((str(row["length"]), row["model"],
                      "-" if row["ms_per_step"] is None else f"{row['ms_per_step']:.1f}",
                      "-" if row["ratio_to_reference"] is None else f"{row['ratio_to_reference']:.2f}",
                      "-" if row["peak_memory_mb"] is None else f"{row['peak_memory_mb']:.0f}",
                      f"error: {row['error']}" if row["error"] else ""))
    widths = [max(len(r[i]) for r in (header, *table)) for i in range(len(header))]
    right = {0, 2, 3, 4}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    lines.append(fmt(header))
    lines.append("  ".join("-" * w for w in widths[:-1]))
    previous = None
    for cells in table:
        if previous is not None and cells[0] != previous:
            lines.append("")
        previous = cells[0]
        lines.append(fmt(cells))
    lines.append("")
    lines.append(f"({report['seconds']:.0f} s)")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--memory-probe":
        return _memory_probe(argv[1])
    print("usage: harness bench --help (this module's own entry point is internal)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
