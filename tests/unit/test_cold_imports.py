"""What the batch handlers' cold path leaves out: Powertools' batch utility and event data classes,
which cost a cold start asyncio and all of Powertools' ~40 event data classes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.coldstart import HANDLER_ENV, cold_path
from local.client import REPO_ROOT

NOT_IMPORTED = ("asyncio", "aws_lambda_powertools.utilities.batch", "aws_lambda_powertools.utilities.data_classes")


@pytest.mark.parametrize("handler", ["submit", "poll", "finalize", "notify"])
def test_a_batch_handler_cold_path_imports_neither_asyncio_nor_powertools_batch_nor_data_classes(handler: str) -> None:
    code = (
        "import sys\n"
        "sys.path[:0] = sys.argv[3:]\n"
        "for module in sys.argv[1].split(','): __import__(module)\n"
        "unwanted = sys.argv[2].split(',')\n"
        "print('aleph_pipeline.batches' in sys.modules)\n"
        "print(' '.join(sorted(m for m in sys.modules if any(m == u or m.startswith(u + '.') for u in unwanted))))\n"
    )
    paths = [str(REPO_ROOT / "functions" / handler), str(REPO_ROOT / "layers" / "domain")]
    env = {"PATH": os.environ.get("PATH", ""), **HANDLER_ENV}
    args = [sys.executable, "-c", code, ",".join(cold_path(handler)), ",".join(NOT_IMPORTED), *paths]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    uses_batches, unwanted = (done.stdout + "\n").split("\n")[:2]
    assert uses_batches == "True"  # the partial batch responses come from the domain instead
    assert unwanted.split() == []
