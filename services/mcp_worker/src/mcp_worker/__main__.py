"""Entry point: `python -m mcp_worker` (not implemented yet)."""

from __future__ import annotations

import sys


def main() -> int:
    """Explain that this worker is not implemented yet and exit non-zero."""
    print("mcp_worker is not implemented yet; see the project's issues.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
