"""The quant-type table is the single source: every row complete, and every consumer reads it."""

import pytest

from edgeq.spec import DEFAULT_QUANT, FORMAT_GGUF, FORMAT_ONNX, FORMATS, QUANT_TYPES, QuantType, quant_names
from tests.conftest import run_edgeq


@pytest.mark.parametrize("q", QUANT_TYPES.values(), ids=lambda q: q.name)
def test_every_row_is_complete(q):
    assert q.bits_per_weight > 0 and q.prior_kld >= 0 and q.prior_source
    if q.fmt == FORMAT_GGUF:
        assert q.ftype >= 0 and q.onnx_precision is None  # a real gguf-py LlamaFileType member
    else:
        assert q.onnx_precision in ("int4", "int8", "fp16", "fp32") and q.gguf_file_type is None
        assert (q.block_size is not None) == (q.onnx_precision == "int4")


def test_gguf_file_types_are_the_ones_llama_cpp_numbers():
    import llama_cpp

    for q in (QUANT_TYPES[n] for n in quant_names(FORMAT_GGUF)):
        assert q.ftype == getattr(llama_cpp, f"LLAMA_FTYPE_{q.gguf_file_type}"), q.name


def test_a_row_missing_its_runtime_type_is_refused():
    with pytest.raises(ValueError, match="a GGUF row names a file type"):
        QuantType("Q9_X", FORMAT_GGUF, 9.0, 0.0, "made up")
    with pytest.raises(ValueError, match="prior KLD and its source"):
        QuantType("int2", FORMAT_ONNX, 2.0, 0.1, "", onnx_precision="int4", block_size=32)


def test_the_cli_offers_every_type_and_marks_the_defaults():
    r = run_edgeq("export", "--help")
    text = " ".join(r.stdout.split())
    for fmt in FORMATS:
        assert DEFAULT_QUANT[fmt] in quant_names(fmt)
        assert f"{DEFAULT_QUANT[fmt]} (default)" in text
        assert all(q in text for q in quant_names(fmt))
