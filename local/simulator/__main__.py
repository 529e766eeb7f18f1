"""``python -m local.simulator``: run the simulator until SIGINT/SIGTERM.

Prints ``simulator listening on <url>`` once ready (and writes the URL to --ready-file) so a
parent process can wait for that line instead of guessing with sleeps.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from local.simulator.config import CALLBACK_SHAPES, DEFAULT_KEYS, parse_keys
from local.simulator.server import SimulatorServer


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--public-url", default=None, help="base of result URLs (default: own URL)")
    parser.add_argument("--keys", default=json.dumps(DEFAULT_KEYS), help="JSON object provider -> API key")
    parser.add_argument("--callback-shape", choices=CALLBACK_SHAPES, default="A")
    parser.add_argument("--seed", type=int, default=None, help="makes fault rates deterministic")
    parser.add_argument("--workers", type=int, default=2, help="concurrent video edits")
    parser.add_argument("--ready-file", type=Path, default=None, help="write the URL here when ready")
    parser.add_argument("--quiet", action="store_true", help="do not log every request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s simulator %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        keys = parse_keys(json.loads(args.keys))
    except (json.JSONDecodeError, ValueError) as exc:
        print(f"--keys: {exc}", file=sys.stderr)
        return 2
    server = SimulatorServer(
        args.host,
        args.port,
        public_url=args.public_url,
        keys=keys,
        callback_shape=args.callback_shape,
        seed=args.seed,
        workers=args.workers,
    )
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    try:
        if args.ready_file is not None:
            args.ready_file.parent.mkdir(parents=True, exist_ok=True)
            args.ready_file.write_text(server.url + "\n")
        print(f"simulator listening on {server.url}", flush=True)
        stopping.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
