"""The common shell of every `stages/*.py` script: arguments, logging and user-facing errors.

A stage fails with one readable line (what is wrong and what to do) instead of a traceback when
the problem is the user's input; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from in2.params import InputError, Params, load_params

log = logging.getLogger("in2")

#: Errors caused by input (params, files, data) rather than by a bug.
USER_ERRORS: tuple[type[Exception], ...] = (InputError, FileNotFoundError)


def parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return p


def run_stage(
    main: Callable[[Params, argparse.Namespace], None],
    description: str | None = None,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """Parse arguments, load and validate params, run `main`, turn user errors into exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    p = parser(description)
    if configure is not None:
        configure(p)
    args = p.parse_args()
    try:
        main(load_params(args.params), args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
