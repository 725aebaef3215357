"""What issue 25's guards cost: the pre-flight supervised-token check and the run-directory lock.

    .venv/bin/python benchmarks/guards_bench.py [--examples 6000] [--repeats 5]

encode_training_chats tokenizes every D_T and D_S example once before the model loads and refuses examples
without a supervised token (the training loop then trains on these ids; until 2026-12-03 it encoded each drawn
batch again). It is timed on synthetic chats with the test suite's tiny Qwen2-style tokenizer (a real Qwen2.5
tokenizer needs the hub), against encoding the same examples in the loop's old batches of 16 (one pass over the
data). The lock is timed as one hold_run_directory enter + exit. Medians over --repeats runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # _fixtures: the offline tokenizer


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from _fixtures import build_tiny_tokenizer, chat_examples
    from canary_lib.chat import encode_chat
    from canary_lib.rundir_lock import hold_run_directory
    from canary_lib.train import encode_training_chats

    tokenizer = build_tiny_tokenizer()
    chats = [e["messages"] for e in chat_examples(args.examples, seed=1, turns=2, with_system=True)]
    check = _median_seconds(lambda: encode_training_chats({"D_T": chats}, tokenizer, 2048), args.repeats)
    one_pass = _median_seconds(
        lambda: [[encode_chat(c, tokenizer, 2048) for c in chats[i : i + 16]] for i in range(0, len(chats), 16)],
        args.repeats,
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()

        def hold() -> None:
            with hold_run_directory(run, "training"):
                pass

        lock = _median_seconds(hold, max(args.repeats, 50))
    print(
        f"encode_training_chats, {args.examples} chats: {check:.3f} s median "
        f"({1000 * check / args.examples:.3f} ms per chat)"
    )
    print(f"the loop's own encoding of one pass over them: {one_pass:.3f} s median; ratio {check / one_pass:.2f}")
    print(f"run-directory lock, enter + exit: {1000 * lock:.2f} ms median")


if __name__ == "__main__":
    main()
