"""`cgrp` command line: a thin adapter over cgrp_ros.core; one module per command in cgrp_ros/commands.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .core.errors import CgrpError

COMMANDS = ("demo", "fuse", "calibrate", "train", "export", "eval", "bench", "soak")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgrp", description="Thermal-visible fusion for misaligned cameras (CGRP).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"cgrp_ros.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cgrp_ros.commands.{name}":
                raise
            continue  # command not part of this build
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="[cgrp] %(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except CgrpError as exc:  # our own errors: one clear line, no traceback
        print(f"cgrp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no (a folder that cannot be created, a full disk): one line too
        logging.getLogger("cgrp_ros").debug("file system error", exc_info=True)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"cgrp {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cgrp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
