"""One cell-loop pattern for every custom recurrent cell.

A :class:`GatedCell` owns an input projection ``W_ih`` and a recurrent projection ``W_hh`` with
``num_gates`` blocks of ``hidden_size`` rows (the layout and initialisation of ``torch.nn.LSTM``)
and defines only ``step``: the nonlinearity that turns the pre-activations of one time step into
the next state. :class:`CellLoop` does the rest the same way for every cell:

- the input projection ``W_ih x_t + b`` of every time step is one large product up front (and its
  gradients, ``dX`` and ``dW_ih``, one large product each in the backward pass);
- at each time step one ``addmm`` adds ``W_hh h_{t-1}`` to that step's slice, and ``step`` gives
  the next state;
- ``W_hh``'s gradient, ``sum_t dG_t^T h_{t-1}``, is one large product at the end of the backward
  pass instead of a small one per step (the per-step product uses ``W_hh`` detached, and
  :class:`_Projection` adds the weight's gradient from the recorded ``h_{t-1}``).

So the per-step graph holds the cell's own operations and one ``addmm`` whose backward computes
only ``dh_{t-1}``: no concatenation and no per-step weight gradient to accumulate. The weight
gradients are taken as ``(Xᵀ dG)ᵀ``, the operand order MKL runs fast when X is narrow (few inputs;
``dGᵀ X`` was several times slower, part of why an up-front projection had once measured slower
than a per-step product over ``[x_t, h_{t-1}]``). The gain against that former loop, and why a cell
on this loop stays well above its floor (the cell's own operations, a few microseconds each), are
measured in docs/performance.md ("Issue #20", ``benchmarks/cell_loop.py``). Results equal the
per-step equations (the same products, summed in another order).

A cell that has no ``implementation`` of its own runs faster still through the *graph loop*
(:mod:`harness.step_graphs`): at the first forward pass, ``step`` is traced once with its
vector-Jacobian product for the inputs' batch size, dtype and device, and the whole sequence then
runs as two generated TorchScript loops (forward, and backward in reverse), with neither Python nor
the autograd engine at each step; the weight gradients stay large products. A step that cannot be
traced (control flow on tensor values, in-place changes to its inputs, ...) or whose loops do not
reproduce the eager step on a few random steps runs on the eager loop above, with one warning;
``keep_states`` and ``graph_loop = False`` (or ``HARNESS_GRAPH_LOOP=0``) keep it too.

Under ``torch.compile`` the loop takes the plain path (a per-step product over the concatenation),
which the compiler traces without a custom autograd function. The inputs are unbound once;
indexing ``x[:, t]`` inside the loop would make the backward pass quadratic in the length.

A cell may run its step some other way than its eager equations (the built-in gated cells
use fused CPU kernels from their plugin); it says so in an ``implementation`` attribute,
which :attr:`CellLoop.implementation` reports for result provenance. This module knows nothing
about any such kernels.
"""

from __future__ import annotations

import math
import os
import warnings
import weakref
from typing import Any

import torch
from torch import nn

State = tuple[torch.Tensor, ...]


class GatedCell(nn.Module):
    """Base class for custom cells; subclasses set ``num_gates`` and implement :meth:`step`."""

    num_gates: int = 1
    state_size: int = 1  # number of (batch, hidden) tensors in the state; h is always the first

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        rows = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(rows))
        self.bias_hh = nn.Parameter(torch.empty(rows))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in ±1/sqrt(hidden_size), as ``torch.nn.LSTM``; subclasses then set gate biases."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def gate_slice(self, index: int) -> slice:
        """Rows of the gate block ``index`` in ``weight_ih``/``weight_hh``/biases."""
        return slice(index * self.hidden_size, (index + 1) * self.hidden_size)

    def initial_state(self, batch_size: int, like: torch.Tensor) -> State:
        zeros = like.new_zeros(batch_size, self.hidden_size)
        return tuple(zeros for _ in range(self.state_size))

    def step(self, gates: torch.Tensor, state: State) -> State:
        """Return the next state from this step's pre-activations ``W_ih x_t + b + W_hh h_{t-1}``."""
        raise NotImplementedError


class CellLoop(nn.Module):
    """Runs a :class:`GatedCell` over a sequence; follows the model contract of ``harness.model_api``."""

    def __init__(self, cell: GatedCell) -> None:
        super().__init__()
        self.cell = cell
        self.output_size = cell.hidden_size
        #: With ``keep_states`` set, a forward pass leaves its hidden states h_0..h_{T-1} in ``states``
        #: (the gradient-flow measurement reads ‖∂L/∂h_t‖ from them).
        self.keep_states = False
        self.states: list[torch.Tensor] | None = None
        #: Run a cell that has no ``implementation`` of its own through the graph loop where its step
        #: can be traced (see :mod:`harness.step_graphs`); ``False`` (or ``HARNESS_GRAPH_LOOP=0``) keeps
        #: the eager loop.
        self.graph_loop = True
        self._ran: str | None = None

    @property
    def implementation(self) -> str:
        """How the cell computes its step: the cell's own ``implementation`` (e.g. ``"fused-cpu"``,
        ``"eager: HARNESS_FUSED=0"``); for a cell that does not say, what the last forward pass ran:
        ``"graph-loop"`` (the step's traced forward and backward graphs as TorchScript loops over the
        sequence, :mod:`harness.step_graphs`), ``"eager: <why>"`` (the step could not run so) or
        ``"eager"`` (the graph loop switched off, or ``keep_states``). Before the first forward pass,
        where the step is traced for the inputs' shapes, it says what that pass will try: ``"graph-loop"``
        unless switched off (a step that then cannot be traced reports ``"eager: <why>"`` afterwards)."""
        if _declares_implementation(self.cell):
            return str(self.cell.implementation)
        if self._ran is not None:
            return self._ran
        return "graph-loop" if self._graph_loop_on() and not self.keep_states else "eager"

    def _graph_loop_on(self) -> bool:
        return self.graph_loop and os.environ.get("HARNESS_GRAPH_LOOP", "1") != "0"

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs.dim() != 3 or inputs.shape[1] == 0:
            raise ValueError(f"CellLoop expects inputs (batch, length >= 1, features), got {tuple(inputs.shape)}")
        if torch.compiler.is_compiling():
            outputs = self._concatenated(inputs)
        else:
            program = self._program(inputs)
            if program is not None:
                return self._graphed(inputs, program)
            outputs = self._projected(inputs)
        if self.keep_states:
            self.states = outputs
        return torch.stack(outputs, 1), outputs[-1]

    def _program(self, inputs: torch.Tensor) -> Any:
        """The cell's compiled step graphs for these inputs (derived once and cached), or ``None`` to run eagerly."""
        cell = self.cell
        if (_declares_implementation(cell) or self.keep_states or inputs.device.type not in ("cpu", "cuda")
                or torch.is_autocast_enabled(inputs.device.type)):  # the traced dtypes would not hold
            return None
        if not self._graph_loop_on():
            self._ran = "eager"
            return None
        state = cell.initial_state(inputs.shape[0], inputs)
        key = (cell.training, cell.weight_hh.shape[0], inputs.dtype, inputs.device,
               tuple((s.shape, s.dtype, s.device) for s in state),
               tuple((p.shape, p.dtype, p.device) for p in (*cell.parameters(), *cell.buffers())))
        programs = _PROGRAMS.setdefault(cell, {})
        if key not in programs:
            programs[key] = self._derive(state)
        found = programs[key]
        if isinstance(found, str):
            self._ran = f"eager: {found}"
            return None
        self._ran = "graph-loop"
        return found

    def _derive(self, state: State) -> Any:
        """Trace, compile and check the cell's step; a string says why it cannot run as a graph loop."""
        from harness.step_graphs import Untraceable, derive, verify

        cell = self.cell
        try:
            program = derive(cell, state, cell.weight_hh.shape[0])
            verify(program, self._eager_sequence, cell, state)
        except Untraceable as exc:
            reason = f"step not traceable ({exc})"
            warnings.warn(f"{type(cell).__name__}: the graph loop cannot run this cell, so its step runs eagerly: "
                          f"{reason}", RuntimeWarning, stacklevel=4)
            return reason
        return program

    def _graphed(self, inputs: torch.Tensor, program: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole sequence through the cell's step graphs (:class:`harness.step_graphs.GraphLoopFunction`)."""
        from harness.step_graphs import GraphLoopFunction

        cell = self.cell
        state = cell.initial_state(inputs.shape[0], inputs)
        return GraphLoopFunction.apply(program, self._eager_sequence, inputs, cell.bias_ih + cell.bias_hh, *state,
                                       *cell.parameters(), *cell.buffers())

    def _eager_sequence(self, inputs: torch.Tensor, bias: torch.Tensor,
                        *rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`_graphed` computes, eagerly: ``rest`` is the initial state, then the cell's parameters
        and buffers, substituted for its own (the reference of the graph loop, and its double backward)."""
        cell = self.cell
        n_s = cell.state_size
        state, values = tuple(rest[:n_s]), rest[n_s:]
        names = [n for n, _ in cell.named_parameters()] + [n for n, _ in cell.named_buffers()]
        substituted = dict(zip(names, values))
        batch, length, features = inputs.shape
        projected = torch.addmm(bias, inputs.transpose(0, 1).reshape(length * batch, features),
                                substituted["weight_ih"].t())
        recurrent = substituted["weight_hh"].t()
        outputs = []
        with torch.nn.utils.stateless._reparametrize_module(cell, substituted):
            for projected_t in projected.view(length, batch, -1).unbind(0):
                state = cell.step(torch.addmm(projected_t, state[0], recurrent), state)
                outputs.append(state[0])
        return torch.stack(outputs, 1), outputs[-1]

    def _projected(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """The input projection up front, one ``addmm`` per step, ``W_hh``'s gradient at the end."""
        cell = self.cell
        batch, length, features = inputs.shape
        previous: list[torch.Tensor] = []  # h_{t-1} of every step, for W_hh's gradient
        projected = _Projection.apply(inputs.transpose(0, 1).reshape(length * batch, features), cell.weight_ih,
                                      cell.bias_ih + cell.bias_hh, cell.weight_hh, previous)
        recurrent = cell.weight_hh.detach().t()  # its gradient comes from _Projection
        state = cell.initial_state(batch, inputs)
        outputs = []
        for projected_t in projected.view(length, batch, -1).unbind(0):
            previous.append(state[0].detach())
            state = cell.step(torch.addmm(projected_t, state[0], recurrent), state)
            outputs.append(state[0])
        return outputs

    def _concatenated(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """One product of ``[x_t, h_{t-1}]`` with ``[W_ih W_hh]`` per step (plain autograd, for compilers)."""
        cell = self.cell
        weight = torch.cat([cell.weight_ih, cell.weight_hh], 1).t()  # (input + hidden, gates * hidden)
        bias = cell.bias_ih + cell.bias_hh
        state = cell.initial_state(inputs.shape[0], inputs)
        outputs = []
        for x_t in inputs.unbind(1):
            state = cell.step(torch.addmm(bias, torch.cat([x_t, state[0]], 1), weight), state)
            outputs.append(state[0])
        return outputs


#: Per cell (weakly: a copied cell traces again), the compiled step graphs per input signature, or why not.
_PROGRAMS: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()


def _declares_implementation(cell: nn.Module) -> bool:
    """Whether the cell says how it runs its step (then the loop leaves the step to it)."""
    return hasattr(type(cell), "implementation") or "implementation" in vars(cell)


class _Projection(torch.autograd.Function):
    """``X W_ihᵀ + b`` for every position (time-major rows); its backward also gives ``W_hh``'s gradient.

    Every step adds ``W_hh h_{t-1}`` (``W_hh`` detached) to its rows, so the gradient reaching these
    rows is the gradient of the pre-activations ``dG``, and ``dW_hh = dGᵀ [h_{-1}; ...; h_{T-2}]``, with
    the states ``previous`` that the loop records while it runs. One large product instead of one per step.
    """

    @staticmethod
    def forward(ctx: Any, inputs: torch.Tensor, weight_ih: torch.Tensor, bias: torch.Tensor,
                weight_hh: torch.Tensor, previous: list[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(inputs, weight_ih)
        ctx.previous = previous
        return torch.addmm(bias, inputs, weight_ih.t())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inputs, weight_ih = ctx.saved_tensors
        needs = ctx.needs_input_grad
        # weight gradients as (Xᵀ dG)ᵀ: MKL runs dGᵀ X several times slower when X is narrow (few inputs)
        return (grad.mm(weight_ih) if needs[0] else None,
                inputs.t().mm(grad).t() if needs[1] else None,
                grad.sum(0) if needs[2] else None,
                torch.cat(ctx.previous).t().mm(grad).t() if needs[3] else None,
                None)
