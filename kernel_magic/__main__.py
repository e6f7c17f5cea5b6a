"""``python -m kernel_magic install [--user|--sys-prefix|--prefix P]`` (and ``uninstall``)."""
from __future__ import annotations

import argparse
import sys

from kernel_magic import kernel_install as kernelspec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernel_magic",
                                     description="Install the PacketScript Lab Jupyter kernel.")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install the kernel spec")
    where = inst.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true",
                       help="for the current user (the default)")
    where.add_argument("--sys-prefix", action="store_true",
                       help=f"into this Python's environment ({sys.prefix})")
    where.add_argument("--prefix", help="under PREFIX/share/jupyter/kernels")
    where.add_argument("--system", action="store_true", help="for every user of the machine")
    inst.add_argument("--name", default=kernelspec.KERNEL_NAME)
    inst.add_argument("--display-name", default=kernelspec.DISPLAY_NAME)
    rm = sub.add_parser("uninstall", help="remove the kernel spec")
    rm.add_argument("--name", default=kernelspec.KERNEL_NAME)
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            prefix = sys.prefix if args.sys_prefix else args.prefix
            user = not (args.system or prefix)
            path = kernelspec.install(user=user, prefix=prefix, name=args.name,
                                      display_name=args.display_name)
            print(f"installed kernel {args.name!r} ({args.display_name}) in {path}")
        else:
            print(f"removed kernel {args.name!r} from {kernelspec.uninstall(args.name)}")
    except (OSError, ValueError, KeyError) as exc:
        print(f"python -m kernel_magic {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
