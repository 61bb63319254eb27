"""The minimal gated unit (MGU; Zhou, Wu, Zhang & Zhou 2016, "Minimal gated unit for recurrent
neural networks"), on harness's shared cell loop.

One gate does the work of the GRU's reset and update gates::

    f_t = σ(W_f x_t + U_f h_{t-1} + b_f)
    h̃_t = tanh(W_h x_t + U_h (f_t ⊙ h_{t-1}) + b_h)
    h_t = (1 − f_t) ⊙ h_{t-1} + f_t ⊙ h̃_t

Parameters use the layout of :class:`harness.cells.GatedCell` with two gate blocks, block 0 for
``f`` and block 1 for the candidate: ``weight_ih = [W_f; W_h]``, ``weight_hh = [U_f; U_h]``,
``b_f = bias_ih[0] + bias_hh[0]`` and ``b_h = bias_ih[1] + bias_hh[1]`` — exactly the paper's
parameters, 2/3 of a GRU of the same size.

How it fits the shared loop, honestly: :class:`~harness.cells.CellLoop` hands ``step`` the
pre-activations ``W_ih x_t + b + W_hh h_{t-1}``, so block 1 arrives as ``W_h x + b_h + U_h h``.
The candidate needs ``U_h (f ⊙ h)`` instead, and ``f`` is known only inside the step, so the
product cannot come from the loop's shared ``W_hh h`` alone. ``step`` therefore subtracts
``U_h ((1 − f) ⊙ h)``::

    W_h x + b_h + U_h h − U_h ((1 − f) ⊙ h) = W_h x + b_h + U_h (f ⊙ h)

which is exact in exact arithmetic (the float64 reference test checks it to 1e-10) and costs one
extra H×H product per step: three H×H products per step where a hand-written loop would need
two. Keeping one parameter layout and the shared loop was judged worth that for an example; a
fast MGU would write its own loop.

The gate bias is initialised to −1 (``gate_bias``), so that at initialisation the state keeps
1 − σ(−1) = σ(1) of itself per step: the same retention as the harness's LSTM (forget bias 1)
and CIFG (input bias −1) (see harness's docs/models.md). Zhou et al. do not prescribe an initialisation.
"""

from __future__ import annotations

import torch

from harness.cells import CellLoop, GatedCell, State


class MGUCell(GatedCell):
    """Minimal gated unit cell: gate blocks ``f`` and candidate; the state is ``h`` alone."""

    num_gates = 2
    state_size = 1

    def __init__(self, input_size: int, hidden_size: int, gate_bias: float = -1.0) -> None:
        super().__init__(input_size, hidden_size)
        with torch.no_grad():
            self.bias_ih[self.gate_slice(0)] = gate_bias
            self.bias_hh[self.gate_slice(0)] = 0.0

    def step(self, gates: torch.Tensor, state: State) -> State:
        (h,) = state
        gf, gh = gates.chunk(2, dim=1)  # gh = W_h x + b_h + U_h h, from the shared loop
        f = torch.sigmoid(gf)
        u_h = self.weight_hh[self.gate_slice(1)]
        # W_h x + b_h + U_h (f ⊙ h) = gh − U_h ((1 − f) ⊙ h): see the module docstring
        candidate = torch.tanh(torch.addmm(gh, (1.0 - f) * h, u_h.t(), alpha=-1.0))
        return (torch.lerp(h, candidate, f),)  # (1 − f) ⊙ h + f ⊙ h̃


def build_mgu(input_size: int, hidden_size: int = 128, gate_bias: float = -1.0) -> CellLoop:
    """The registered factory: ``harness run --models mgu`` calls it with the task's input size."""
    return CellLoop(MGUCell(input_size, hidden_size, gate_bias))
