"""``python -m harness.testing.float32_report MODEL ...``: the long-length check's measurements
(float32 against float64 outputs and parameter gradients) for registered models, one CSV row each,
so that its bounds can be compared with what real models measure."""

from __future__ import annotations

import argparse
import json
from typing import Any

from harness.testing._common import restoring_global_rng, seed_everything, single_threaded
from harness.testing.precision import LONG_BATCH, float32_errors


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


@restoring_global_rng
@single_threaded
def main(argv: list[str] | None = None) -> None:
    """Print model, length, batch, output error, gradient error and its parameter, as the check
    measures them (the model built under seed 0, batch 2)."""
    from harness.registry.loader import get_model
    from harness.runs.options import build_core

    parser = argparse.ArgumentParser(prog="python -m harness.testing.float32_report", description=__doc__)
    parser.add_argument("models", nargs="+", help="registered model names")
    parser.add_argument("--length", type=int, default=1000, help="T (default 1000, the check's)")
    parser.add_argument("--input-size", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=8)
    parser.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                        help="a model option, e.g. init=chrono (T is passed to models that take length)")
    args = parser.parse_args(argv)
    print("model,options,length,batch,output_error,gradient_error,parameter")
    options = dict(args.option)
    for name in args.models:
        seed_everything(0)
        module = build_core(get_model(name), args.input_size, args.hidden_size, args.length, options)
        e = float32_errors(module, args.input_size, args.length, LONG_BATCH)
        described = " ".join(f"{k}={v}" for k, v in options.items())
        print(f"{name},{described},{e.length},{e.batch},{e.output_error:.2e},{e.gradient_error:.2e},{e.parameter}")


if __name__ == "__main__":
    main()
