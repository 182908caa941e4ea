"""Worker process of ``ndformer bench``: measures one case read as JSON from stdin.

    echo '{"pattern": "window(8)", "reference": null, "shape": [64, 64]}' \
        | python -m ndformer.bench.worker

Prints the result as one JSON line on stdout.
"""

from __future__ import annotations

import json
import sys

from .measure import Case, measure_case


def main() -> None:
    fields = json.loads(sys.stdin.read())
    fields["shape"] = tuple(fields["shape"])
    print(json.dumps(measure_case(Case(**fields))))


if __name__ == "__main__":
    main()
