"""The README's support matrix, written from spec.py's tables, so it cannot drift from what edgeq does:
tests/test_docs.py compares the README's block with matrix(), and checks that every test it names exists.
`python -m edgeq.support README.md` rewrites the block."""

from __future__ import annotations

import sys
from pathlib import Path

from edgeq.spec import ARCH_TEST, GGUF_ARCHS, ONNX_ARCHS, REFUSED_ARCHS, ROPE_SCALINGS, ROPE_TEST, TOKENIZER_FAMILIES

BEGIN, END = "<!-- support matrix: written by `python -m edgeq.support README.md` -->", "<!-- end of support matrix -->"


def matrix() -> str:
    """Tokenizer family × GGUF, then architecture × format; each cell with the test that shows it."""
    lines = [
        "| tokenizer family | layout | models | GGUF export | ONNX: served prompt = transformers' | shown by |",
        "|---|---|---|---|---|---|",
    ]
    for f in TOKENIZER_FAMILIES:
        onnx = ("✓" if not f.onnx_differs else f"differs: {f.onnx_differs}") if f.onnx_test else "untested"
        shown = ", ".join(_name(t) for t in (f.test, f.onnx_test) if t)
        lines.append(f"| {f.name} | {f.layout} | {f.models} | ✓ parity gate green | {onnx} | {shown} |")
    lines += ["", "| architecture | GGUF | ONNX (GenAI builder) | shown by |", "|---|---|---|---|"]
    for name, arch in GGUF_ARCHS.items():
        onnx, onnx_test = ONNX_ARCHS.get(name, ("untested", None))
        runs_as = "" if arch.gguf_arch == name else f" (as llama.cpp's `{arch.gguf_arch}`)"
        tests = ", ".join(_name(t) for t in (ARCH_TEST, onnx_test) if t)
        lines.append(f"| {name} | ✓{runs_as} | {onnx} | {tests} |")
    for name, why in REFUSED_ARCHS.items():
        lines.append(f"| {name} | refused: {why} | | |")
    written = "; ".join(f"`{k}` ({v})" for k, v in ROPE_SCALINGS.items())
    lines += ["", f"Rope scaling written to GGUF: {written}; any other is refused by name ({_name(ROPE_TEST)})."]
    return "\n".join(lines)


def _name(test: str) -> str:
    return f"`{test.rsplit('::', 1)[1]}`"


def tests_named() -> list[str]:
    """Every test the matrix names, as tests/<file>::<function>."""
    families = [t for f in TOKENIZER_FAMILIES for t in (f.test, f.onnx_test) if t]
    return families + [ARCH_TEST, ROPE_TEST] + [t for _, t in ONNX_ARCHS.values()]


def rewrite(readme: Path) -> None:
    text = readme.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{BEGIN}\n{matrix()}\n{END}{tail}")


if __name__ == "__main__":
    rewrite(Path(sys.argv[1]))
