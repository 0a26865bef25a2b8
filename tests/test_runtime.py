"""The runtime path (artifact loading, GGUF checks, profiles) stays free of torch and transformers; the scores it
computes in the artifact's child, against a hand computation."""

import subprocess
import sys

import numpy as np
import pytest


def test_runtime_modules_import_neither_torch_nor_transformers():
    code = (
        "import sys, edgeq.runtime, edgeq.ggufcheck, edgeq.profiles, edgeq.cli, edgeq.bench, edgeq.benchreport; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_answer_nll_sums_minus_log_softmax_of_each_answer_token_at_the_position_before():
    """Two sequences over a 3-token vocabulary, logits chosen by hand; the expected sum is written out term by term:
    position t's row scores token t + 1, and only tokens from each sequence's start count."""
    import math

    from edgeq.runtime import answer_nll_of

    # no two rows alike, none uniform: read one position late, the sum differs (by 1 here)
    rows = {0: [2.0, 0.0, 0.0], 1: [0.0, 1.0, 3.0], 2: [1.0, 0.0, 2.0], 3: [0.0, 0.0, 5.0]}

    def logits_of(ids):  # a row per position, chosen by the token there
        return np.array([rows[i] for i in ids])

    def logp(row, k):
        return row[k] - math.log(sum(math.exp(v) for v in row))

    got = answer_nll_of(logits_of, [[0, 1, 2], [3, 2, 0, 1]], [2, 2])
    # sequence 1: token 2 at position 2, scored by position 1 (token 1's row)
    # sequence 2: tokens 0 and 1 at positions 2 and 3, scored by positions 1 (token 2) and 2 (token 0)
    want = -(logp(rows[1], 2) + logp(rows[2], 0) + logp(rows[0], 1))
    assert got["tokens"] == 3 and got["nll_sum"] == pytest.approx(want, rel=1e-12)
