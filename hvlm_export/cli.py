"""The ``hvlm-export`` command line: thin commands over the public API.

User errors (HvlmExportError) print one message without a traceback and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hvlm_export.errors import HvlmExportError

__all__ = ["main"]


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from hvlm_export.registry import REGISTRY

    table = Table(title="hvlm-export mechanisms")
    for col in ("name", "module", "inputs", "defaults", "what"):
        table.add_column(col)
    for spec in REGISTRY.values():
        defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items())
        table.add_row(spec.name, spec.factory.__name__, ", ".join(spec.inputs), defaults, spec.summary)
    Console().print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hvlm-export", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the registered mechanisms")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HvlmExportError as err:
        print(f"hvlm-export {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
