"""The house's rules, read from the source (benchmarks/structure.py draws the same graph): no import circles, edgeq's
own modules imported at module level, heavy third-party imports deferred, a README read in ten minutes."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import structure  # noqa: E402

HEAVY = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "llama_cpp", "onnxruntime_genai", "onnx_ir"}


def test_no_circles_and_no_arrows_back_up():
    m = structure.measure()
    assert m["circles"] == [] and m["arrows_back_up"] == []


def test_edgeq_modules_are_imported_at_module_level():
    assert structure.graph()["inner"] == []


def test_no_heavy_library_is_imported_at_module_level():
    """`edgeq bench` runs on the runtime-only install, and the CLI imports every module: torch and friends wait
    for the function that needs them."""
    for path in sorted((ROOT / "edgeq").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not {n.split(".")[0] for n in names} & HEAVY, f"{path.name}: {names}"


def test_the_readme_is_short_and_the_rest_is_in_docs():
    assert len((ROOT / "README.md").read_text().splitlines()) < 150
    for page in ("build", "fine-tuning", "export", "plan", "mixed-precision", "serving", "security", "profiles"):
        assert (ROOT / "docs" / f"{page}.md").is_file()


def test_every_mutation_still_applies_and_names_tests_that_exist():
    """benchmarks/mutation_check.py breaks the code on purpose: a refactor that moves a line it breaks, or renames a
    test it expects to turn red, would silently retire that check."""
    import mutation_check

    for m in mutation_check.MUTATIONS:
        assert (ROOT / m.file).read_text().count(m.old) == 1, m.name
        for node in m.tests:
            file, name = node.split("::")
            assert f"def {name.split('[')[0]}(" in (ROOT / file).read_text(), (m.name, node)
    assert len({m.name for m in mutation_check.MUTATIONS}) == len(mutation_check.MUTATIONS)
