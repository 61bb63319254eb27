"""Gate-bias initialisations shared by the built-in gated models.

``default``: the forget gate's total bias is ``forget_bias`` (1 unless given; PyTorch's own default
is 0), so the initial forget value is σ(1) ≈ 0.73 (Gers, Schmidhuber & Cummins 2000; Jozefowicz,
Zaremba & Sutskever 2015).

``chrono`` (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?"): for dependencies
up to T_max steps, each unit's forget bias is log(u) with u ~ U[1, T_max − 1], and its input-gate
bias −log(u); every other bias is 0. The initial forget value σ(log u) = u / (1 + u) then gives
unit j a characteristic memory time 1 / (1 − σ(b_f)) = 1 + u_j, spread over [2, T_max]. T_max is the
trial's dependency length T unless ``chrono_max`` gives another. Values are drawn from torch's
global generator, which the harness seeds per trial, so they are reproducible.

The bias of a gate is the sum of two halves (``bias_ih + bias_hh``, PyTorch's split layout): the
value goes into ``bias_ih`` and ``bias_hh`` is zeroed, since only the total matters.
"""

from __future__ import annotations

import torch

INITS = ("default", "chrono")


def check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")


def chrono_t_max(chrono_max: int | None, chrono_scale: float, length: int | None) -> float | None:
    """T_max of chrono initialisation: ``chrono_max`` if given, else ``chrono_scale`` × the trial's
    length T (Tallec & Ollivier 2018 used T_max = 3T/2 on copy: ``chrono_scale=1.5``); None when
    neither is known."""
    if not (isinstance(chrono_scale, (int, float)) and chrono_scale > 0):
        raise ValueError(f"chrono_scale must be a positive number, got {chrono_scale!r}")
    if chrono_max is not None:
        return chrono_max
    return None if length is None else chrono_scale * length


def chrono_log_u(hidden_size: int, t_max: float | None, like: torch.Tensor) -> torch.Tensor:
    """log(u), u ~ U[1, T_max − 1] per unit (u = 1 when T_max ≤ 2)."""
    if t_max is None:
        raise ValueError("init='chrono' needs T_max: pass chrono_max, or build the model for a trial "
                         "(the harness passes the trial's length)")
    u = torch.empty(hidden_size, dtype=like.dtype, device=like.device).uniform_(1.0, max(float(t_max) - 1.0, 1.0))
    return torch.log(u)


def set_gate_biases(bias_ih: torch.Tensor, bias_hh: torch.Tensor, hidden: int, gates: dict[str, int],
                    init: str, forget_bias: float, t_max: float | None) -> None:
    """Write one layer's gate biases in place. ``gates`` maps ``input``/``forget``/``update`` to the
    index of that gate's block (an absent gate is skipped); with ``coupled`` the forget value is
    1 − input, so the input gate carries minus the forget bias."""
    def block(index: int) -> slice:
        return slice(index * hidden, (index + 1) * hidden)

    with torch.no_grad():
        if init == "chrono":
            log_u = chrono_log_u(hidden, t_max, bias_ih)
            bias_ih.zero_()
            bias_hh.zero_()
            values = {"forget": log_u, "input": -log_u, "update": log_u, "coupled": -log_u}
        else:
            values = {"forget": torch.full((hidden,), float(forget_bias)),
                      "coupled": torch.full((hidden,), -float(forget_bias))}
        for gate, index in gates.items():
            if gate in values:
                bias_ih[block(index)] = values[gate]
                bias_hh[block(index)] = 0.0
