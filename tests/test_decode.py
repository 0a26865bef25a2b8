"""decode.answers_here: many greedy answers at once and the references' NLL in the same pass, each against an
independent computation with llama-cpp-python's own one-sequence API (in this process: a test may crash)."""

import numpy as np
import pytest

from edgeq.decode import answers_here, shared_prefix
from edgeq.export.gguf import GgufExport, export_gguf
from tests.conftest import make_tiny_model

BUDGET = 10


@pytest.fixture(scope="module")
def gguf(tmp_path_factory, default_model):
    """A random model whose greedy answers follow the prompt (weights of std 0.1), in F32."""
    root = tmp_path_factory.mktemp("decode")
    model = make_tiny_model(root / "model", default_model, seed=3, initializer_range=0.1)
    export_gguf(GgufExport(model=str(model), out=str(root / "m.gguf"), quant="F32"))
    return root / "m.gguf"


@pytest.fixture(scope="module")
def llm(gguf):
    import llama_cpp

    return llama_cpp.Llama(str(gguf), n_ctx=512, logits_all=True, verbose=False)


PROMPTS = [[1, 5, 9, 30 + k, 40 + 2 * k, 7] + [100 + k] * k for k in range(7)]  # 6 to 12 tokens, 3 shared


def alone(llm, ids: list[int]) -> np.ndarray:
    """(T, vocab) float64 logits of one sequence, fed whole from an empty cache."""
    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)], dtype=np.float64)


def greedy(llm, prompt: list[int], budget: int, stops: set) -> list[int]:
    """One sequence, one token per step: argmax of the last row, stop before a stop token or after `budget`."""
    out: list[int] = []
    while len(out) < budget:
        t = int(alone(llm, prompt + out)[-1].argmax())
        if t in stops:
            break
        out.append(t)
    return out


def nll(llm, prompt: list[int], ref: list[int]) -> float:
    """Σ −log softmax over the reference's tokens, the whole sequence teacher-forced at once."""
    x = alone(llm, prompt + ref)[len(prompt) - 1 : -1]  # row t predicts token t + 1
    logp = x - x.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(ref)), ref].sum())


@pytest.fixture(scope="module")
def by_hand(llm):
    return [greedy(llm, p, BUDGET, set()) for p in PROMPTS]


@pytest.mark.parametrize("slots", [1, 3, 32])
def test_each_answer_is_its_prompts_own_greedy_decode_whatever_the_slots(gguf, by_hand, slots):
    """With 3 slots for 7 prompts, finished sequences hand their slot to the next prompt mid-batch."""
    assert len({tuple(a) for a in by_hand}) > 3  # the answers differ: a mixed-up order would show
    got = answers_here(str(gguf), PROMPTS, BUDGET, [], slots=slots)
    assert [g["ids"] for g in got] == by_hand


def test_a_stop_token_ends_the_answer_before_it(gguf, llm, by_hand):
    first = by_hand[0]
    at = next(i for i in range(2, len(first)) if first[i] not in first[:i])  # a token new to the first answer
    want = [greedy(llm, p, BUDGET, {first[at]}) for p in PROMPTS]
    assert want[0] == first[:at]
    got = answers_here(str(gguf), PROMPTS, BUDGET, [first[at]], slots=2)
    assert [g["ids"] for g in got] == want


def test_reference_nll_read_off_the_greedy_pass_is_teacher_forcing(gguf, llm, by_hand):
    """References that follow the greedy answer all the way (then go on past the budget), leave it at the first
    token, at the fourth, are shorter than the answer, or are absent: each sum is the teacher-forced one."""
    other = [t + 1 for t in by_hand[4]]
    refs = [
        by_hand[0] + [5, 6, 7],  # the whole answer, then 3 more: past the budget, teacher-forced on its cache
        other[:6],  # differs from the first token on
        by_hand[2][:3] + other[3:8],  # follows for 3 tokens, then leaves
        by_hand[3][:2],  # shorter than the answer
        None,
        [by_hand[5][0]],  # one token
        by_hand[6][:BUDGET] + [9],
    ]
    for slots in (1, 3, 32):
        got = answers_here(str(gguf), PROMPTS, BUDGET, [], refs, slots=slots)
        assert [g["ids"] for g in got] == by_hand  # scoring never changes an answer
        for g, p, r in zip(got, PROMPTS, refs, strict=True):
            assert g["nll_tokens"] == (len(r) if r else 0)
            assert g["nll_sum"] == pytest.approx(nll(llm, p, r) if r else 0.0, rel=1e-4, abs=1e-4)


def test_no_new_tokens_scores_the_references_only(gguf, llm):
    refs = [[200 + k, 17, 300 + k] for k in range(len(PROMPTS))]
    got = answers_here(str(gguf), PROMPTS, 0, [], refs, slots=2)
    assert all(g["ids"] == [] for g in got)
    want = [nll(llm, p, r) for p, r in zip(PROMPTS, refs, strict=True)]
    assert [g["nll_sum"] for g in got] == pytest.approx(want, rel=1e-4)


def test_the_shared_prefix_leaves_every_prompt_a_token_of_its_own():
    assert shared_prefix(PROMPTS) == 3
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter one keeps its last token
    assert shared_prefix([[1, 2, 3]]) == 2 and shared_prefix([[7]]) == 0 and shared_prefix([[1, 2], [3, 2]]) == 0
