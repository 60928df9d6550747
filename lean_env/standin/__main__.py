"""Entry point: `python -m lean_env.standin --rules RULES.json [--state-dir DIR]`.

Speaks the REPL protocol on stdin/stdout until stdin closes (see `lean_env.standin`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lean_env.standin.rules import RuleTableError, load_rules
from lean_env.standin.server import StandinRepl, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lean_env.standin",
        description="Stand-in for leanprover-community/repl (a test double, not Lean).")
    parser.add_argument("--rules", type=Path, required=True, help="JSON rule table.")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="Folder shared by stand-ins of one test: max_fires counters and "
                             "events.jsonl.")
    args = parser.parse_args(argv)
    try:
        table = load_rules(args.rules)
    except RuleTableError as exc:
        print(f"stand-in: {exc}", file=sys.stderr)
        return 2
    if args.state_dir is not None:
        args.state_dir.mkdir(parents=True, exist_ok=True)
    serve(StandinRepl(table, state_dir=args.state_dir, out=sys.stdout), sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
