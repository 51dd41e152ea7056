"""Command line entry point for tinyproj."""

import argparse


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and print a greeting."""
    parser = argparse.ArgumentParser(prog="tinyproj")
    parser.add_argument("--name", default="world")
    parser.add_argument("--times", type=int, default=1)
    args = parser.parse_args(argv)
    for _ in range(args.times):
        print(f"hello, {args.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
