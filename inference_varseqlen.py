#!/usr/bin/env python3
"""
Answers a question about a passage with a prebuilt variable-sequence-length BERT QA engine
(TensorRT or portable).  Each feature runs alone and unpadded: its S real tokens, cu_seqlens [0, S].
Without a question it asks interactively; with -sq it answers a whole SQuAD file and writes the
predictions for squad/evaluate-v1.1.py.
"""

from __future__ import annotations

import sys

import inference
from helpers.cli import exit_on_error, parse_known_options


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    # inference.py's options minus -b: a packed batch here is always one sequence.
    args = parse_known_options(inference.build_parser(__doc__, with_batch_size=False), argv)
    args.batch_size = 1
    return inference.run(args)


if __name__ == "__main__":
    sys.exit(main())
