"""A cell's ``step`` as two TorchScript loops over time: the shared cell loop without the autograd engine.

:class:`harness.cells.CellLoop` runs a third-party :class:`~harness.cells.GatedCell`'s Python ``step``
once per time step, and autograd records every operation of it: at the sizes of issue #20 the
operations cost more than the arithmetic. This module derives, once per cell, batch size, dtype and
device, what the step does forward and backward, and runs the whole sequence with neither Python
nor the autograd engine in the loop:

1. **Trace.** ``step`` is traced with its parameters as explicit inputs (``torch.func.functional_call``
   on a wrapper module), together with its vector-Jacobian product (``torch.func.vjp``), by
   ``make_fx`` on fake tensors: one ATen graph of the forward and the backward operations. A step
   whose Python control flow depends on tensor values cannot be traced on fake tensors, and fails here.
2. **Partition.** Each node is *invariant* (it depends on the parameters alone: computed once per
   sequence, e.g. a transposed weight slice), *forward* (it depends on the step's inputs) or
   *backward* (it depends on the output gradients). Forward nodes that backward nodes read are
   saved at every step. A parameter gradient that is a product ``Aᵀ B`` of per-step tensors,
   possibly followed by linear reshapes (transpose, scaling, ``slice_backward``), or a sum over the
   batch, is not computed per step: its operands are kept and the gradient is one large product
   (or sum) after the loop, as :class:`harness.cells._Projection` does for ``W_hh``. Other parameter
   gradients are accumulated in place.
   Before that the graph is simplified (identities dropped, ``split`` as slices, scalings folded
   into operands computed once, ``a + b·c`` as ``addcmul``, Python numbers as 0-dim tensors made
   once, common subexpressions merged), and pointwise forward nodes that the backward can compute
   from what it has anyway are recomputed there instead of saved.
3. **Generate.** Two TorchScript functions are generated as source and compiled: a forward loop
   (``gates = x_t + h W_hhᵀ`` in place on the projected inputs, the step's forward nodes, the saved
   tensors written into per-step rows of sequence-long buffers) and a backward loop in reverse time
   (the step's backward nodes, ``dh_{t-1} += dG_t W_hh``, the gradients of the gates ``dG_t``).
   Results that do not outlive a step are written into buffers made once (out= variants). The
   TorchScript interpreter dispatches each operation at about half the cost of the Python
   interpreter and autograd together.
4. **Check.** Before first use, both loops run over a few random steps and are compared with the
   eager step under autograd; any difference (or any failure above) leaves the cell on the eager loop.

:class:`GraphLoopFunction` is the whole-sequence ``autograd.Function`` that calls the two loops.
A second backward pass through the same graph (``retain_graph``) reruns the forward loop; a
backward pass that itself needs a graph (double backward) recomputes the sequence eagerly.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

State = tuple[torch.Tensor, ...]

CONST, FORWARD, BACKWARD = 0, 1, 2
aten = torch.ops.aten

# Linear maps of one tensor that commute with summing over time: a parameter gradient that ends in
# a chain of them after a product or a batch sum is computed once, after the loop.
_LINEAR = {aten.t.default, aten.neg.default, aten.mul.Scalar, aten.div.Scalar, aten.slice_backward.default,
           aten.select_backward.default, aten.view.default, aten._unsafe_view.default, aten.reshape.default,
           aten.permute.default, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.default,
           aten.transpose.int, aten.clone.default, aten.alias.default, aten.expand.default}
_IDENTITY = {aten.detach.default, aten.alias.default, aten.lift_fresh_copy.default}
_LIKE = {aten.zeros_like.default: 0.0, aten.ones_like.default: 1.0, aten.empty_like.default: 0.0}


class Untraceable(Exception):
    """The step cannot run as generated loops; the message says why (reported by ``implementation``)."""


class _Step(nn.Module):
    """Calls ``cell.step``, so that ``functional_call`` can substitute the cell's parameters."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, gates: torch.Tensor, state: State) -> State:
        return tuple(self.cell.step(gates, state))  # type: ignore[operator]


@dataclass
class _Deferred:
    """A parameter gradient computed after the loop: ``chain(mm(cat A_t, cat B_t))`` or ``chain(sum(cat X_t))``."""

    kind: str  # "mm" or "sum"
    base: fx.Node
    operands: list[fx.Node]  # the per-step tensors kept in lists
    transposed: list[bool]  # mm: operand stored untransposed (the graph used its transpose)
    chain: list[fx.Node] = field(default_factory=list)  # applied in order to the result


@dataclass
class StepProgram:
    """The compiled loops of one cell at one batch size, dtype and device.

    They are called under ``torch.jit.optimized_execution(False)``: the graph executor's optimisations
    would split each ``addmm`` into ``mm`` and ``add`` (for fusers that the CPU build does not have), and
    cost more than they save here."""

    forward: Callable[..., Any]
    backward: Callable[..., Any]
    state_size: int
    saved: int  # number of saved per-step lists returned by ``forward``
    param_grads: list[bool]  # which parameters get a gradient (others are unused by the step)
    grad_order: list[int]  # the parameters whose gradients ``backward`` returns, in its order
    source: str  # the generated TorchScript, for inspection
    into_states: bool  # the forward loop writes h_t into its argument ``states`` (else only into its list)
    ih: int = 0  # the positions of W_ih and W_hh among the parameters
    hh: int = 1


def derive(cell: nn.Module, state: State, gates_width: int) -> StepProgram:
    """Trace, partition and compile ``cell.step`` for states like ``state``; raises :class:`Untraceable`."""
    try:
        graph, counts = _trace(cell, state, gates_width)
        source, saved, param_grads, grad_order, into_states = _generate(graph, counts)
        unit = torch.jit.CompilationUnit(source)
    except Untraceable:
        raise
    except Exception as exc:  # noqa: BLE001 (any failure to trace or compile means: run eagerly)
        raise Untraceable(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]) from exc
    names = [n for n, _ in cell.named_parameters()]
    return StepProgram(unit.forward_loop, unit.backward_loop, len(state), saved, param_grads, grad_order, source,
                       into_states, names.index("weight_ih"), names.index("weight_hh"))


def _trace(cell: nn.Module, state: State, gates_width: int) -> tuple[fx.Graph, dict[str, int]]:
    from torch.fx.experimental.proxy_tensor import make_fx

    wrapper = _Step(cell)
    params = dict(wrapper.named_parameters())
    buffers = dict(wrapper.named_buffers())
    p_names, b_names = list(params), list(buffers)
    n_p, n_b, n_s = len(p_names), len(b_names), len(state)

    def joint(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p, b = flat[:n_p], flat[n_p:n_p + n_b]
        gates, st, tangents = flat[n_p + n_b], flat[n_p + n_b + 1:n_p + n_b + 1 + n_s], flat[n_p + n_b + 1 + n_s:]

        def step(gates: torch.Tensor, st: State, p: State) -> State:
            values = {**dict(zip(p_names, p)), **dict(zip(b_names, b))}
            return torch.func.functional_call(wrapper, values, (gates, st))

        out, vjp, *_ = torch.func.vjp(step, gates, tuple(st), tuple(p))
        if not isinstance(out, tuple) or len(out) != n_s:
            raise Untraceable(f"step returned {type(out).__name__}, expected a tuple of {n_s} tensors")
        for o, s in zip(out, st):
            if o.shape != s.shape or o.dtype != s.dtype:
                raise Untraceable("step changed the shape or dtype of the state")
        d_gates, d_state, d_params = vjp(tuple(tangents))
        return (*out, d_gates, *d_state, *d_params)

    like = state[0]
    examples = [p.detach() for p in params.values()] + [b.detach() for b in buffers.values()]
    examples += [like.new_zeros(like.shape[0], gates_width)] + [s.detach() for s in state]
    examples += [torch.zeros_like(s) for s in state]
    with torch.random.fork_rng(devices=[]):  # tracing must not move the global generator
        gm = make_fx(torch.func.functionalize(joint), tracing_mode="fake")(*examples)
    return gm.graph, {"params": n_p, "buffers": n_b, "state": n_s}


# --------------------------------------------------------------------------------------------
# Partition and code generation


def _generate(graph: fx.Graph, counts: dict[str, int]) -> tuple[str, int, list[bool], list[int], bool]:
    """The TorchScript source of both loops, the number of saved lists, which parameters get gradients,
    the order of the parameter gradients ``backward_loop`` returns, and whether h_t goes into ``states``."""
    gen = _Generator(graph, counts)
    source = gen.forward_source() + "\n" + gen.backward_source()
    return source, len(gen.saved), gen.param_grads, [*gen.accumulated, *gen.deferred], gen.into_states


class _Generator:
    """The joint graph simplified and partitioned, and the source of the two loops written from it."""

    def __init__(self, graph: fx.Graph, counts: dict[str, int]) -> None:
        n_p, n_b, n_s = counts["params"], counts["buffers"], counts["state"]
        self.graph, self.n_s = graph, n_s
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        (self.output,) = [n for n in graph.nodes if n.op == "output"]
        self.p_nodes, self.b_nodes = placeholders[:n_p], placeholders[n_p:n_p + n_b]
        self.gates_node = placeholders[n_p + n_b]
        self.s_nodes = placeholders[n_p + n_b + 1:n_p + n_b + 1 + n_s]
        self.t_nodes = placeholders[n_p + n_b + 1 + n_s:]
        self._simplify()
        self.outs = outs = list(self.output.args[0])
        self.f_outs, self.d_gates = outs[:n_s], outs[n_s]
        self.d_state, self.d_params = outs[n_s + 1:2 * n_s + 1], outs[2 * n_s + 1:]
        self.names = {node: f"v_{node.name}" for node in graph.nodes}
        self._partition()

    def _simplify(self) -> None:
        graph = self.graph
        for node in graph.nodes:
            if node.op == "get_attr":
                raise Untraceable("the step uses a tensor constant")
            if node.op == "call_function" and node.target is not operator.getitem:
                if not isinstance(node.target, torch._ops.OpOverload):
                    raise Untraceable(f"the traced step calls {node.target}")
                if node.target._schema.is_mutable:
                    raise Untraceable(f"the traced step mutates a tensor ({node.target})")
        # identities, and *_like factories as constants of the traced shape
        for node in list(graph.nodes):
            if node.op != "call_function":
                continue
            if node.target in _IDENTITY:
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
            elif node.target in _LIKE:
                val = node.meta.get("val")
                if not isinstance(val, torch.Tensor):
                    raise Untraceable("no shape recorded for a factory")
                with graph.inserting_before(node):
                    full = graph.call_function(aten.full.default, (list(val.shape), _LIKE[node.target]),
                                               {"dtype": val.dtype, "device": val.device})
                full.meta["val"] = val
                node.replace_all_uses_with(full)
                graph.erase_node(node)
        _rsub(graph)
        _split(graph)
        graph.eliminate_dead_code()
        _cse(graph)
        constant = set(self.p_nodes + self.b_nodes)
        for node in graph.nodes:  # nodes computed from parameters and buffers alone (not random)
            if (node.op == "call_function" and all(a in constant for a in node.all_input_nodes)
                    and not _seeded(node)):
                constant.add(node)
        _fold_scale(graph, constant)
        _addcmul(graph)
        graph.eliminate_dead_code()
        _scalar_tensors(graph)
        _cse(graph)

    def _partition(self) -> None:
        phase: dict[fx.Node, int] = {}
        for node in self.graph.nodes:
            if node.op == "placeholder":
                phase[node] = (CONST if node in self.p_nodes or node in self.b_nodes else
                               BACKWARD if node in self.t_nodes else FORWARD)
            elif node.op == "call_function":
                inputs = [phase[a] for a in node.all_input_nodes]
                phase[node] = max([CONST, *inputs, FORWARD if _seeded(node) else CONST])
        self.phase = phase
        # parameter gradients: deferred to one product or sum after the loop where possible
        self.deferred: dict[int, _Deferred] = {}
        for index, grad in enumerate(self.d_params):
            if isinstance(grad, fx.Node) and phase[grad] == BACKWARD:
                found = _defer(grad, phase, self.output)
                if found is not None:
                    self.deferred[index] = found
        self.param_grads = [isinstance(g, fx.Node) and not (g.target is aten.full.default and g.args[1] == 0.0)
                            for g in self.d_params]
        # backward loop: roots are the gradients the loop carries or keeps
        self.accumulated = [i for i, g in enumerate(self.d_params) if self.param_grads[i] and i not in self.deferred]
        roots: list[fx.Node] = [self.d_gates, *self.d_state, *(self.d_params[i] for i in self.accumulated)]
        for item in self.deferred.values():
            roots += item.operands
        bwd_nodes = self._needed(roots, BACKWARD)
        saved = [n for n in self.graph.nodes if phase.get(n) == FORWARD and n.op != "output"
                 and (any(u in bwd_nodes for u in n.users) or n in roots)]
        # pointwise forward nodes that the backward can compute from what it has are recomputed there rather
        # than saved: at these sizes writing and reading a saved tensor costs about as much as the operation
        recomputed: list[fx.Node] = []
        changed = True
        while changed:
            changed = False
            for node in list(saved):
                have = set(saved) | set(recomputed)
                if (node.op == "call_function" and node.target is not operator.getitem and not _seeded(node)
                        and torch.Tag.pointwise in node.target.tags
                        and all(phase[a] == CONST or (a in have and a is not node) for a in node.all_input_nodes)):
                    saved.remove(node)
                    recomputed.append(node)
                    changed = True
        self.bwd_nodes = [n for n in self.graph.nodes if n in set(bwd_nodes) | set(recomputed)]
        # h_{t-1} is the previous step's output, which the forward loop keeps anyway
        self.h_prev = self.s_nodes[0] in saved
        if self.h_prev:
            saved.remove(self.s_nodes[0])
        self.saved = saved
        epilogue = [a for item in self.deferred.values() for n in item.chain for a in n.all_input_nodes]
        self.consts_bwd = self._needed(roots + epilogue + [a for n in self.bwd_nodes for a in n.all_input_nodes],
                                       CONST)
        self.fwd_nodes = self._needed([*self.f_outs, *saved], FORWARD)
        self.consts_fwd = self._needed(self.f_outs + [a for n in self.fwd_nodes for a in n.all_input_nodes], CONST)

    def _needed(self, roots: Sequence[Any], within: int) -> list[fx.Node]:
        """The nodes of phase ``within`` that ``roots`` read (transitively, inside that phase), in graph order."""
        seen: set[fx.Node] = set()
        stack = [r for r in roots if isinstance(r, fx.Node)]
        while stack:
            node = stack.pop()
            if node in seen or self.phase[node] != within:
                continue
            seen.add(node)
            stack.extend(node.all_input_nodes)
        return [n for n in self.graph.nodes if n in seen]

    # -- writing

    def statement(self, node: fx.Node, into: str | None = None) -> str:
        """The call of ``node``; with ``into``, its out= variant writing into that tensor (``"self"``: its
        in-place variant, writing into its first argument)."""
        names = self.names
        if node.target is operator.getitem:
            return f"{names[node]} = {names[node.args[0]]}[{node.args[1]}]"
        op = node.target
        assert isinstance(op, torch._ops.OpOverload)
        schema = op._schema.arguments
        args = [_literal(a, names, schema[i].type if i < len(schema) else None) for i, a in enumerate(node.args)]
        by_name = {arg.name: arg.type for arg in schema}
        args += [f"{k}={_literal(v, names, by_name.get(k))}" for k, v in node.kwargs.items()]
        if into is not None and into != "self":
            args.append(f"{_out_name(op)}={into}")
        name = op._overloadpacket.__name__ + ("_" if into == "self" else "")
        return f"{names[node]} = torch.ops.{op.namespace}.{name}({', '.join(args)})"

    def in_gates(self, saved: Sequence[fx.Node]) -> dict[fx.Node, str]:
        """``addmm(g, a, b)`` of a column block ``g`` of the gates that nothing else reads, computed in place:
        the gates are a row of the projected inputs, which belong to the loop (this spares a copy of ``g``)."""
        gates = self.gates_node
        blocks = list(gates.users)
        if gates in saved or not all(u.target is aten.slice.Tensor and u.args[1] in (1, -1) and len(u.args) == 4
                                     for u in blocks):
            return {}
        found = {}
        for block in blocks:
            (user,) = block.users if len(block.users) == 1 else (None,)
            if (user is not None and user.target is aten.addmm.default and user.args[0] is block
                    and block not in saved and _same(user, block)
                    and all(other is block or other.args[3] <= block.args[2] or other.args[2] >= block.args[3]
                            for other in blocks)):
                found[user] = "self"
        return found

    def block(self, nodes: Sequence[fx.Node], indent: str, buffers: dict[fx.Node, str] | None = None) -> list[str]:
        buffers = buffers or {}
        return [indent + self.statement(n, buffers.get(n)) for n in nodes if n.op == "call_function"]

    def temporaries(self, nodes: Sequence[fx.Node], escaping: set[fx.Node]) -> dict[fx.Node, str]:
        """One buffer per step-local result (written again at every step) for nodes whose values do not
        outlive the step: out= variants spare an allocation each, and the buffers stay in cache."""
        def escapes(node: fx.Node) -> bool:
            return node in escaping or any(_is_view(u) and escapes(u) for u in node.users)
        return {n: f"tb_{self.names[n]}" for n in nodes if _bufferable(n) and not escapes(n)}

    def allocate(self, buffers: dict[fx.Node, str], leading: str = "") -> list[str]:
        out = []
        for node, buffer in buffers.items():
            val = node.meta["val"]
            shape = ", ".join([leading] * bool(leading) + [str(d) for d in val.shape])
            out.append(f"    {buffer} = torch.empty([{shape}], dtype={_literal(val.dtype, self.names)}, "
                       f"device={_literal(val.device, self.names)})")
        return out

    def ref(self, node: Any) -> str:
        if not isinstance(node, fx.Node):
            raise Untraceable(f"a non-tensor output {node!r}")
        return self.names[node]

    def params(self) -> list[str]:
        return [f"{self.names[n]}: Tensor" for n in self.p_nodes + self.b_nodes]

    def forward_source(self) -> str:
        names, saved, f_outs, n_s = self.names, self.saved, self.f_outs, self.n_s
        s_vars = [names[n] for n in self.s_nodes]
        lines = ["def forward_loop(xs: List[Tensor], w: Tensor, states: Tensor, "
                 + ", ".join([f"{s}: Tensor" for s in s_vars] + self.params())
                 + ") -> Tuple[List[Tensor], " + ", ".join(["Tensor"] * n_s + ["List[Tensor]"] * len(saved)) + "]:"]
        lines += self.block(self.consts_fwd, "    ")
        in_place = self.in_gates(saved)
        buffers = self.temporaries(self.fwd_nodes, {*saved, *[o for o in f_outs if isinstance(o, fx.Node)],
                                                    self.gates_node, *in_place})
        lines += self.allocate(buffers)
        buffers.update(in_place)
        # h_t is written into its row of ``states`` (T, B, H) where the step makes it with an out= variant
        h_out = f_outs[0]
        self.into_states = (isinstance(h_out, fx.Node) and h_out in self.fwd_nodes and _bufferable(h_out)
                            and f_outs.count(h_out) == 1 and h_out not in buffers)
        if self.into_states:
            buffers[h_out] = "state_rows[t]"
            lines.append("    state_rows = states.unbind(0)")
        lines.append("    hs: List[Tensor] = []")
        # saved tensors that an operation makes go into rows of one buffer each (in time order, for the
        # backward loop's reverse sweep), the others into lists
        rows = {n: f"s_{i}" for i, n in enumerate(saved) if _bufferable(n) and n not in buffers}
        for node, rows_name in rows.items():
            val = node.meta["val"]
            lines.append(f"    {rows_name} = torch.empty([len(xs)] + {list(val.shape)}, dtype="
                         f"{_literal(val.dtype, names)}, device={_literal(val.device, names)}).unbind(0)")
            buffers[node] = f"{rows_name}[t]"
        lines += [f"    s_{i}: List[Tensor] = []" for i, n in enumerate(saved) if n not in rows]
        lines.append("    for t in range(len(xs)):")
        # in place: the rows xs[t] belong to the loop (the projected inputs, read by nothing else)
        lines.append(f"        {names[self.gates_node]} = torch.ops.aten.addmm_(xs[t], {s_vars[0]}, w)")
        lines += self.block(self.fwd_nodes, "        ", buffers)
        lines += [f"        s_{i}.append({names[n]})" for i, n in enumerate(saved) if n not in rows]
        lines.append(f"        {', '.join(s_vars)} = {', '.join(self.ref(o) for o in f_outs)}")
        lines.append(f"        hs.append({s_vars[0]})")
        lines.append("    return hs, " + ", ".join(s_vars + [f"s_{i}" for i in range(len(saved))]))
        return "\n".join(lines) + "\n"

    def backward_source(self) -> str:
        names, saved, deferred, outs, n_s = self.names, self.saved, self.deferred, self.outs, self.n_s
        d_vars = [f"d_{i}" for i in range(n_s)]
        acc = {i: f"acc_{i}" for i in self.accumulated}
        returns = [*d_vars, *acc.values(), *(f"g_{i}" for i in deferred)]
        lines = ["def backward_loop(steps: int, dhs: List[Tensor], has_dhs: bool, w: Tensor, dg_all: Tensor, "
                 "hs: List[Tensor], h0: Tensor, "
                 + ", ".join([f"{d}: Tensor" for d in d_vars] + self.params()
                             + [f"s_{i}: List[Tensor]" for i in range(len(saved))])
                 + ") -> Tuple[" + ", ".join(["Tensor"] * len(returns)) + "]:"]
        lines += self.block(self.consts_bwd, "    ")
        lines += [f"    {a} = torch.zeros_like({names[self.p_nodes[i]]})" for i, a in acc.items()]
        # deferred operands computed in the loop are written into their rows of one buffer per operand
        row_buffers = {n: f"ob_{names[n]}" for item in deferred.values() for n in item.operands
                       if n in self.bwd_nodes and _bufferable(n) and n not in outs}
        lines += self.allocate(row_buffers, "steps")
        lists = {}
        for i, item in deferred.items():
            for k, node in enumerate(item.operands):
                shape = list(node.meta["val"].shape[1:]) if node in row_buffers else None
                lists[i, k] = f"{row_buffers[node]}.view([-1] + {shape})" if node in row_buffers else f"op_{i}_{k}"
        lines += [f"    {v}: List[Tensor] = []" for v in lists.values() if not v.startswith("ob_")]
        # the gates' gradient is written into its rows of dg_all by the operation that makes it, if it can
        d_gates, d_h = self.d_gates, self.d_state[0]
        into = (isinstance(d_gates, fx.Node) and d_gates in self.bwd_nodes and _bufferable(d_gates)
                and outs.count(d_gates) == 1 and d_gates not in row_buffers)
        fresh = (isinstance(d_h, fx.Node) and d_h in self.bwd_nodes and set(d_h.users) == {self.output}
                 and outs.count(d_h) == 1 and _bufferable(d_h))
        escaping = {n for n in outs if isinstance(n, fx.Node)} | {n for it in deferred.values() for n in it.operands}
        buffers = {**self.temporaries(self.bwd_nodes, escaping), **{n: f"{b}_t" for n, b in row_buffers.items()}}
        if into:
            buffers[d_gates] = "dg_t"
        lines += self.allocate({n: b for n, b in buffers.items() if b.startswith("tb_")})
        lines += ["    dg_rows = dg_all.unbind(0)", *[f"    {b}_rows = {b}.unbind(0)" for b in row_buffers.values()]]
        lines += ["    for i in range(steps):", "        t = steps - 1 - i", "        dg_t = dg_rows[t]"]
        lines.append(f"        {names[self.t_nodes[0]]} = torch.ops.aten.add(d_0, dhs[t]) if has_dhs else d_0")
        lines += [f"        {names[self.t_nodes[k]]} = d_{k}" for k in range(1, n_s)]
        lines += [f"        {names[n]} = s_{i}[t]" for i, n in enumerate(saved)]
        if self.h_prev:
            lines.append(f"        {names[self.s_nodes[0]]} = hs[t - 1] if t > 0 else h0")
        lines += [f"        {b}_t = {b}_rows[t]" for b in row_buffers.values()]
        lines += self.block(self.bwd_nodes, "        ", buffers)
        if not into:
            lines.append(f"        dg_t.copy_({self.ref(d_gates)})")
        lines += [f"        {a}.add_({self.ref(self.d_params[i])})" for i, a in acc.items()]
        lines += [f"        {v}.append({names[deferred[i].operands[k]]})" for (i, k), v in lists.items()
                  if not v.startswith("ob_")]
        # dh_{t-1} += dG_t W_hh, in place where the step's own dh_{t-1} is a fresh tensor that nothing else reads
        new_d = [f"torch.ops.aten.addmm{'_' if fresh else ''}({self.ref(d_h)}, dg_t, w)"]
        new_d += [self.ref(d) for d in self.d_state[1:]]
        lines.append(f"        {', '.join(d_vars)} = {', '.join(new_d)}")
        # the lists were appended backwards in time, the row buffers are in time order
        lines += [f"    {v}.reverse()" for v in lists.values() if not v.startswith("ob_")]
        for i, item in deferred.items():
            lines += _epilogue(i, item, lists, names, self.statement)
        # a tuple, even of one value (a single-state cell whose step reads its state only through the gates)
        lines.append("    return (" + ", ".join(returns) + ("," if len(returns) == 1 else "") + ")")
        return "\n".join(lines) + "\n"


def _epilogue(index: int, item: _Deferred, lists: dict[tuple[int, int], str], names: dict[fx.Node, str],
              statement: Callable[[fx.Node], str]) -> list[str]:
    """The deferred gradient of parameter ``index`` from its operand lists, then its chain of linear maps."""
    out = []
    def rows(key: tuple[int, int], dim: int) -> str:
        """The operand's per-step values concatenated along ``dim``: its row buffer viewed, or its list joined."""
        found = lists[key]
        if found.startswith("ob_"):
            return found if dim == 0 else f"{found.split('.')[0]}.permute([1, 0, 2]).reshape([{found.split('.')[0]}"\
                f".shape[1], -1])"
        return f"torch.cat({found}, {dim})"

    if item.kind == "mm":
        a = f"{rows((index, 0), 0)}.t()" if item.transposed[0] else rows((index, 0), 1)
        b = f"{rows((index, 1), 1)}.t()" if item.transposed[1] else rows((index, 1), 0)
        out.append(f"    {names[item.base]} = torch.mm({a}, {b})")
    else:
        keep = bool(item.base.args[2]) if len(item.base.args) > 2 else bool(item.base.kwargs.get("keepdim", False))
        out.append(f"    {names[item.base]} = torch.sum({rows((index, 0), 0)}, [0], {keep})")
    out += ["    " + statement(n) for n in item.chain]
    last = item.chain[-1] if item.chain else item.base
    out.append(f"    g_{index} = {names[last]}")
    return out


def _defer(grad: fx.Node, phase: dict[fx.Node, int], output: fx.Node) -> _Deferred | None:
    """The deferred form of a parameter gradient, if it is a linear chain after a per-step product or batch sum."""
    chain: list[fx.Node] = []
    node = grad
    while node.target in _LINEAR or node.target in (aten.mul.Tensor, aten.div.Tensor):
        others = [a for a in node.all_input_nodes if a is not node.args[0]]
        scalar = [a for a in others if phase[a] == CONST and isinstance(a.meta.get("val"), torch.Tensor)
                  and a.meta["val"].dim() == 0]
        if node.target not in _LINEAR and len(scalar) != 1:
            return None  # a product with something other than a constant number
        if others != scalar or not isinstance(node.args[0], fx.Node):
            return None
        chain.append(node)
        node = node.args[0]
    chain.reverse()
    last = chain[-1] if chain else node
    users_ok = all(len(n.users) == 1 for n in [node, *chain[:-1]]) and set(last.users) == {output}
    if not users_ok or phase[node] != BACKWARD:
        return None
    if node.target is aten.mm.default:
        operands, transposed = [], []
        for arg in node.args[:2]:
            assert isinstance(arg, fx.Node)
            if arg.target is aten.t.default and isinstance(arg.args[0], fx.Node):
                operands.append(arg.args[0])
                transposed.append(True)
            else:
                operands.append(arg)
                transposed.append(False)
        if any(phase[o] == CONST for o in operands):
            return None
        return _Deferred("mm", node, operands, transposed, chain)
    if (node.target is aten.sum.dim_IntList and isinstance(node.args[1], (list, tuple)) and list(node.args[1]) == [0]
            and isinstance(node.args[0], fx.Node)):
        if phase[node.args[0]] == CONST or "dtype" in node.kwargs:
            return None
        return _Deferred("sum", node, [node.args[0]], [False], chain)
    return None


def _rsub(graph: fx.Graph) -> None:
    """``c − x`` as the backward formulas write it (a filled tensor minus ``x``), as one ``rsub``."""
    for node in list(graph.nodes):
        if node.target is not aten.sub.Tensor or node.kwargs or len(node.args) != 2:
            continue
        filled, x = node.args
        if not (isinstance(filled, fx.Node) and isinstance(x, fx.Node) and filled.target is aten.fill.Scalar
                and isinstance(filled.args[0], fx.Node) and filled.args[0].target is aten.full.default):
            continue
        val, x_val = node.meta.get("val"), x.meta.get("val")
        if not (isinstance(val, torch.Tensor) and isinstance(x_val, torch.Tensor) and val.shape == x_val.shape
                and val.dtype == x_val.dtype):
            continue
        with graph.inserting_before(node):
            rsub = graph.call_function(aten.rsub.Scalar, (x, filled.args[1]))
        rsub.meta["val"] = val
        node.replace_all_uses_with(rsub)
        graph.erase_node(node)


def _split(graph: fx.Graph) -> None:
    """``split(x, n, dim)[i]`` as ``slice(x, dim, i·n, (i+1)·n)``: one view per chunk used, not a list of all."""
    for node in list(graph.nodes):
        if node.target is not aten.split.Tensor or not all(u.target is operator.getitem for u in node.users):
            continue
        size = node.args[1]
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        val = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
        if not isinstance(size, int) or not isinstance(dim, int) or not isinstance(val, torch.Tensor):
            continue
        length = val.shape[dim]
        for user in list(node.users):
            index = user.args[1]
            with graph.inserting_before(user):
                sliced = graph.call_function(aten.slice.Tensor, (node.args[0], dim, index * size,
                                                                 min((index + 1) * size, length)))
            sliced.meta["val"] = user.meta.get("val")
            user.replace_all_uses_with(sliced)
            graph.erase_node(user)
        graph.erase_node(node)


def _is_view(node: fx.Node) -> bool:
    """Whether ``node``'s result may share memory with an input (a view, or an element of a list)."""
    op = node.target
    if not isinstance(op, torch._ops.OpOverload):
        return True
    return any(r.alias_info is not None for r in op._schema.returns)


def _out_name(op: Any) -> str | None:
    """The name of the out= argument of ``op``'s out variant (``out``, ``grad_input``, …), if it has one."""
    packet = op._overloadpacket
    names = [a.name for a in op._schema.arguments]
    for overload in packet.overloads():
        schema = getattr(packet, overload)._schema
        written = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        if (len(written) == 1 and written[0].kwarg_only and len(schema.returns) == 1
                and [a.name for a in schema.arguments if a is not written[0]] == names):
            return written[0].name
    return None


def _bufferable(node: fx.Node) -> bool:
    """Whether ``node`` makes one new tensor of a known shape and has an out= variant to write it into a buffer."""
    op = node.target
    val = node.meta.get("val")
    return (node.op == "call_function" and isinstance(op, torch._ops.OpOverload) and not _is_view(node)
            and len(op._schema.returns) == 1 and op._schema.returns[0].type == torch._C.TensorType.get()
            and isinstance(val, torch.Tensor) and not _seeded(node) and _out_name(op) is not None)


def _seeded(node: fx.Node) -> bool:
    return node.target is not operator.getitem and torch.Tag.nondeterministic_seeded in node.target.tags  # type: ignore[union-attr]


def _same(*nodes: Any) -> bool:
    """Whether the nodes are tensors of one shape and dtype (so that rewriting them changes no broadcast)."""
    vals = [n.meta.get("val") if isinstance(n, fx.Node) else None for n in nodes]
    return (all(isinstance(v, torch.Tensor) for v in vals)
            and len({(tuple(v.shape), v.dtype) for v in vals}) == 1)  # type: ignore[union-attr]


def _fold_scale(graph: fx.Graph, constant: set[fx.Node]) -> None:
    """``mm(A, B) · c`` with ``B`` (or ``A``) computed from parameters alone as ``mm(A, B · c)``: ``B · c`` is
    computed once per sequence, not at every step."""
    for node in list(graph.nodes):
        if (node.target not in (aten.mul.Scalar, aten.mul.Tensor) or not isinstance(node.args[0], fx.Node)
                or not _number(node.args[1]) or node.kwargs):
            continue
        mm = node.args[0]
        if mm.target is not aten.mm.default or len(mm.users) != 1:
            continue
        for k in (1, 0):
            operand = mm.args[k]
            if isinstance(operand, fx.Node) and operand in constant:
                with graph.inserting_before(mm):
                    scaled = graph.call_function(aten.mul.Scalar, (operand, node.args[1]))
                scaled.meta["val"] = operand.meta.get("val")
                constant.add(scaled)
                mm.args = tuple(scaled if i == k else a for i, a in enumerate(mm.args))
                node.replace_all_uses_with(mm)
                graph.erase_node(node)
                break


def _addcmul(graph: fx.Graph) -> None:
    """``a + b·c``, ``a − b·c`` and ``a + (−(b·c))`` of tensors of one shape as one ``addcmul``."""
    for node in list(graph.nodes):
        if node.target not in (aten.add.Tensor, aten.sub.Tensor) or node.kwargs or len(node.args) != 2:
            continue
        sign = 1.0 if node.target is aten.add.Tensor else -1.0
        for k in (1, 0) if sign > 0 else (1,):
            a, product = node.args[1 - k], node.args[k]
            value = sign
            if isinstance(product, fx.Node) and product.target is aten.neg.default and len(product.users) == 1:
                product, value = product.args[0], -value
            if not (isinstance(product, fx.Node) and product.target is aten.mul.Tensor and len(product.users) == 1
                    and isinstance(a, fx.Node) and _same(node, a, *product.args)):
                continue
            with graph.inserting_before(node):
                fused = graph.call_function(aten.addcmul.default, (a, *product.args), {"value": value})
            fused.meta["val"] = node.meta.get("val")
            node.replace_all_uses_with(fused)
            graph.erase_node(node)
            break


_SCALAR_OPS = {aten.mul.Scalar: aten.mul.Tensor, aten.div.Scalar: aten.div.Tensor,
               aten.add.Scalar: aten.add.Tensor, aten.sub.Scalar: aten.sub.Tensor,
               aten.mul.Tensor: aten.mul.Tensor, aten.div.Tensor: aten.div.Tensor,
               aten.add.Tensor: aten.add.Tensor, aten.sub.Tensor: aten.sub.Tensor}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar_tensors(graph: fx.Graph) -> None:
    """Binary operations with a Python number as operations with a 0-dim tensor of the same dtype (made once):
    TorchScript's calls with a number convert it to a tensor at every call, about 1.5 µs."""
    for node in list(graph.nodes):
        op = node.target
        if (op not in _SCALAR_OPS and op is not aten.rsub.Scalar) or len(node.args) != 2 or node.kwargs:
            continue
        x, number = node.args
        if not (isinstance(x, fx.Node) and _number(number) and _same(node, x) and x.meta["val"].is_floating_point()):
            continue
        val = x.meta["val"]
        with graph.inserting_before(node):
            scalar = graph.call_function(aten.full.default, ([], float(number)), {"dtype": val.dtype,
                                                                                  "device": val.device})
            args = (scalar, x) if op is aten.rsub.Scalar else (x, scalar)
            target = aten.sub.Tensor if op is aten.rsub.Scalar else _SCALAR_OPS[op]
            replaced = graph.call_function(target, args)
        scalar.meta["val"] = torch.empty((), dtype=val.dtype, device="meta")
        replaced.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(replaced)
        graph.erase_node(node)


def _cse(graph: fx.Graph) -> None:
    """Common subexpressions of deterministic operations, merged."""
    seen: dict[Any, fx.Node] = {}
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if _seeded(node):
            continue
        try:
            key = (node.target, _hashable(node.args), _hashable(node.kwargs))
            hash(key)
        except TypeError:
            continue
        if key in seen:
            node.replace_all_uses_with(seen[key])
            graph.erase_node(node)
        else:
            seen[key] = node


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _literal(value: Any, names: dict[fx.Node, str], schema_type: Any = None) -> str:
    """TorchScript source for one argument of a traced call."""
    if isinstance(value, fx.Node):
        return names[value]
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "float('nan')"
        if math.isinf(value):
            return "float('inf')" if value > 0 else "-float('inf')"
        return repr(value)
    if isinstance(value, (list, tuple)):
        if not value:
            kind = str(schema_type) if schema_type is not None else ""
            inner = "int" if "int" in kind.lower() else "float" if "float" in kind.lower() else "Tensor"
            return f"torch.jit.annotate(List[{inner}], [])"
        return "[" + ", ".join(_literal(v, names) for v in value) + "]"
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, torch.device):
        return f"torch.device({str(value)!r})"
    if isinstance(value, torch.layout):
        return str(value)
    if isinstance(value, torch.memory_format):
        return str(value)
    raise Untraceable(f"an argument TorchScript cannot take: {value!r}")


# --------------------------------------------------------------------------------------------
# The whole sequence as one autograd function


class GraphLoopFunction(torch.autograd.Function):
    """The cell loop over a whole sequence: the input projection, the forward loop of a :class:`StepProgram`,
    and in the backward pass its backward loop and the weight gradients as large products.

    ``apply(program, eager, inputs, bias, *state, *params)``: ``inputs`` ``(B, T, I)``; ``bias`` the
    summed biases of the projection; ``state`` the initial state; ``params`` the cell's parameters then
    buffers, in :meth:`~torch.nn.Module.parameters` order (``program.ih``/``program.hh`` are the
    positions of ``W_ih`` and ``W_hh`` among them). Returns the states ``h`` as ``(B, T, H)`` and
    ``h_{T-1}``. ``eager`` computes the same from the same arguments with autograd: the backward pass
    uses it when a graph of the gradients is wanted (a double backward).
    """

    @staticmethod
    def forward(ctx: Any, program: StepProgram, eager: Callable[..., Any], inputs: torch.Tensor,
                bias: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hs, stacked, rows, saved = _run_forward(program, inputs, bias, rest)
        ctx.program, ctx.eager = program, eager
        ctx.saved, ctx.rows, ctx.stacked, ctx.hs = saved, rows, stacked, hs
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inputs, bias, *rest)
        return stacked.transpose(0, 1).contiguous(), hs[-1].clone()

    @staticmethod
    def backward(ctx: Any, d_seq: torch.Tensor | None, d_last: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        program: StepProgram = ctx.program
        n_s = program.state_size
        needs = ctx.needs_input_grad
        inputs = ctx.saved_tensors
        if torch.is_grad_enabled():  # a graph of the backward pass is wanted (double backward): recompute eagerly
            return (None, None, *_eager_backward(ctx.eager, needs[2:], inputs, d_seq, d_last))
        if ctx.saved is None:  # a second backward pass (retain_graph): the first freed what the loop saved
            ctx.hs, ctx.stacked, ctx.rows, ctx.saved = _run_forward(program, inputs[0], inputs[1], inputs[2:])
        x, state, params = inputs[0], inputs[2:2 + n_s], inputs[2 + n_s:]
        weight_ih, weight_hh = params[program.ih], params[program.hh]
        batch, length, features = x.shape
        stacked, rows, saved, hs = ctx.stacked, ctx.rows, ctx.saved, ctx.hs
        ctx.saved = ctx.stacked = ctx.rows = ctx.hs = None
        d_state = [d_last if d_last is not None else state[0].new_zeros(state[0].shape)]
        d_state += [s.new_zeros(s.shape) for s in state[1:]]
        dhs = list(d_seq.unbind(1)) if d_seq is not None else []
        d_gates = stacked.new_empty(length, batch, weight_hh.shape[0])
        with torch.jit.optimized_execution(False):
            result = program.backward(length, dhs, d_seq is not None, weight_hh, d_gates, hs, state[0], *d_state,
                                      *params, *saved)
        d_initial = result[:n_s]
        grads: list[torch.Tensor | None] = [None] * len(params)
        for index, grad in zip(program.grad_order, result[n_s:]):
            grads[index] = grad
        d_g = d_gates.view(length * batch, -1)
        # weight gradients as (Xᵀ dG)ᵀ, as _Projection (MKL runs dGᵀ X several times slower when X is narrow)
        d_ih = rows.t().mm(d_g).t()
        d_hh = torch.addmm(state[0].t().mm(d_g[:batch]), stacked[:-1].reshape(-1, stacked.shape[2]).t(),
                           d_g[batch:]).t()  # Σ_t h_{t-1}ᵀ dG_t
        for index, product in ((program.ih, d_ih), (program.hh, d_hh)):
            own = grads[index]
            grads[index] = product if own is None else own + product
        d_x = d_g.mm(weight_ih).view(length, batch, features).transpose(0, 1) if needs[2] else None
        return (None, None, d_x, d_g.sum(0) if needs[3] else None,
                *(d if needs[4 + k] else None for k, d in enumerate(d_initial)),
                *(g if needs[4 + n_s + k] else None for k, g in enumerate(grads)))


def _run_forward(program: StepProgram, inputs: torch.Tensor, bias: torch.Tensor,
                 rest: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, Any]:
    """The projection and the forward loop: the states h_t (a list, and stacked time-major), the inputs as
    time-major rows, and the tensors the backward loop reads."""
    n_s = program.state_size
    state, params = rest[:n_s], rest[n_s:]
    weight_ih, weight_hh = params[program.ih], params[program.hh]
    batch, length, features = inputs.shape
    rows = inputs.transpose(0, 1).reshape(length * batch, features)  # time-major rows, for dW_ih too
    projected = torch.addmm(bias, rows, weight_ih.t())  # W_ih x_t + b for every step: one product
    xs = list(projected.view(length, batch, -1).unbind(0))
    states = state[0].new_empty(length, *state[0].shape)
    with torch.jit.optimized_execution(False):  # run the loops as generated (see StepProgram)
        result = program.forward(xs, weight_hh.t(), states, *state, *params)
    hs = result[0]
    return hs, states if program.into_states else torch.stack(hs), rows, result[1 + n_s:]


def _eager_backward(eager: Callable[..., Any], needs: Sequence[bool], inputs: Sequence[torch.Tensor],
                    d_seq: torch.Tensor | None, d_last: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The gradients of the inputs, by autograd through the eager loop (recomputed); with a graph if grad
    mode is on."""
    with torch.enable_grad():
        inputs = [x if x.requires_grad or not need else x.detach().requires_grad_() for x, need in zip(inputs, needs)]
        seq, last = eager(*inputs)
    outputs = [o for o, g in ((seq, d_seq), (last, d_last)) if g is not None]
    grads_out = [g for g in (d_seq, d_last) if g is not None]
    wanted = [x for x, need in zip(inputs, needs) if need]
    found = iter(torch.autograd.grad(outputs, wanted, grads_out, create_graph=torch.is_grad_enabled(),
                                     allow_unused=True) if wanted and outputs else [])
    return [next(found) if need else None for need in needs]


def verify(program: StepProgram, eager: Callable[..., Any], cell: nn.Module, state: State, steps: int = 3) -> None:
    """Run ``program`` over a few random steps against ``eager`` under autograd; raises :class:`Untraceable`
    if any output or gradient differs (beyond rounding) or the loops fail."""
    weight_ih: torch.Tensor = cell.weight_ih  # type: ignore[assignment]
    batch, dtype, device = state[0].shape[0], state[0].dtype, weight_ih.device
    generator = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device, dtype=dtype)

    inputs = rand(batch, steps, weight_ih.shape[1]).requires_grad_()
    bias = rand(weight_ih.shape[0]).requires_grad_()
    initial = [s.detach().clone().requires_grad_(s.is_floating_point()) for s in state]
    params = [p.detach().clone().requires_grad_(p.is_floating_point()) for p in cell.parameters()]
    buffers = [b.detach().clone() for b in cell.buffers()]
    d_seq, d_last = rand(batch, steps, state[0].shape[1]), rand(*state[0].shape)
    args = [inputs, bias, *initial, *params, *buffers]
    wanted = [x for x in args if x.requires_grad]
    try:
        with torch.enable_grad(), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            seq, last = GraphLoopFunction.apply(program, eager, *args)
            found = [seq, last, *torch.autograd.grad((seq, last), wanted, (d_seq, d_last), allow_unused=True)]
            seq, last = eager(*args)
            expected = [seq, last, *torch.autograd.grad((seq, last), wanted, (d_seq, d_last), allow_unused=True)]
    except Exception as exc:  # noqa: BLE001
        raise Untraceable(f"the graph loop failed its check: {type(exc).__name__}: {exc}"[:200]) from exc
    rtol, atol = (1e-7, 1e-9) if dtype == torch.float64 else (1e-3, 1e-4)
    for a, b in zip(found, expected):
        if (a is None) != (b is None) and not all(t is None or not t.any() for t in (a, b)):
            raise Untraceable("the graph loop's gradients differ from the eager step's (one is missing)")
        if a is not None and b is not None and not torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
            raise Untraceable("the graph loop's results differ from the eager step's")
