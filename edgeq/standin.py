"""What llama.cpp itself spends at a model's shape, measured on a stand-in instead of fitted.

A stand-in is the model's own GGUF header — architecture, hyper-parameters, vocabulary — cut to a few layers,
with every tensor's data left as a hole in a sparse file (zeros, no disk). `edgeq bench`'s own measurement runs
it in a child, and the anonymous memory the run adds is the runtime's cost: compute buffers as the graph
touches them, the KV cache (cleared whole when the context is made), the vocabulary's tables, the output
buffer. The weights are file pages of the mmap and do not count; the artifact's own weights are priced from
its tensor table instead (footprint.py).

llama.cpp reuses its compute buffer from layer to layer, so the anonymous memory grows linearly in the layer count
(the KV cache, and each layer's nodes in the graph): stand-ins of two and four periods (a period is the
architecture's repeating layer pattern, e.g. Gemma 3's five sliding-window layers and one global one) give the
fixed part and the part per layer.
"""

from __future__ import annotations

import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeq import child
from edgeq.errors import UsageError
from edgeq.ggufcheck import check_gguf
from edgeq.io import atomic_file
from edgeq.runtime import llama_setup
from edgeq.spec import GGUF_ARCHS

_BLOCK = re.compile(r"^blk\.(\d+)\.")
_INT_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}  # GGUF value types


@dataclass(frozen=True)
class RuntimeCost:
    """Anonymous bytes the runtime adds while serving the model at one (context, prompt, answer) setting."""

    fixed: float  # compute buffers, vocabulary tables, output buffer: independent of the layer count
    per_layer: float  # one layer's KV cache, and its nodes in the graph
    layers: int

    @property
    def kv_cache(self) -> float:
        return self.per_layer * self.layers


def layer_period(arch: str) -> int:
    """Layers in the architecture's repeating pattern (1 where every layer is alike)."""
    return max([a.swa_pattern or a.nope_interval or 1 for a in GGUF_ARCHS.values() if a.gguf_arch == arch] or [1])


def _tensor_info(name: str, dims: list[int], ggml_type: int, offset: int) -> bytes:
    raw = name.encode()
    return b"".join(
        [struct.pack("<Q", len(raw)), raw, struct.pack("<I", len(dims))]
        + [struct.pack("<Q", d) for d in dims]
        + [struct.pack("<IQ", ggml_type, offset)]
    )


def write_standin(src: Path, dst: Path, layers: int) -> None:
    """`src`'s header with its first `layers` blocks and their tensor infos; tensor data a hole of the right size."""
    from gguf.constants import GGMLQuantizationType  # deferred: gguf-py's import costs the CLI's start-up

    header = check_gguf(src)
    meta, infos = header["metadata"], header["tensor_info"]
    arch = meta["general.architecture"]
    key = f"{arch}.block_count".encode()
    kept = [t for t in infos if not (m := _BLOCK.match(t["name"])) or int(m.group(1)) < layers]
    alignment = int(meta.get("general.alignment", 32))
    old_infos = b"".join(_tensor_info(t["name"], t["dims"], 0, 0) for t in infos)
    with open(src, "rb") as f:
        head = f.read(header["data_start"])
    # the tensor infos end where the data's alignment padding begins: find where they start
    first = struct.pack("<Q", len(infos[0]["name"].encode())) + infos[0]["name"].encode()
    kv_end = next(
        p
        for p in range(header["data_start"] - len(old_infos), header["data_start"] - len(old_infos) - alignment, -1)
        if head[p : p + len(first)] == first
    )
    kv = bytearray(head[24:kv_end])
    at = kv.find(struct.pack("<Q", len(key)) + key)
    if at < 0:
        raise UsageError(f"the GGUF has no {key.decode()}", str(src))
    vtype_at = at + 8 + len(key)
    fmt = _INT_FORMATS[struct.unpack("<I", kv[vtype_at : vtype_at + 4])[0]]
    struct.pack_into(fmt, kv, vtype_at + 4, layers)
    table, offset = [], 0
    for t in kept:
        table.append(_tensor_info(t["name"], t["dims"], GGMLQuantizationType[t["type"]].value, offset))
        offset += -(-t["bytes"] // alignment) * alignment
    version, _, n_kv = struct.unpack("<IQQ", head[4:24])
    out = b"GGUF" + struct.pack("<IQQ", version, len(kept), n_kv) + bytes(kv) + b"".join(table)
    out += b"\0" * (-len(out) % alignment)
    with atomic_file(dst) as f:
        f.write(out)
        f.truncate(len(out) + offset)  # the data: a hole, read back as zeros


def runtime_cost(float_gguf: Path, n_ctx: int, n_prompt: int, n_gen: int, threads: int) -> RuntimeCost:
    """Run stand-ins of two and four layer periods as `edgeq bench` runs an artifact; the runtime's cost at the
    model's own layer count. Per layer it is the KV cache (f16, every cell: llama.cpp clears it whole when it
    creates the context) and a little of the graph's own bookkeeping; Gemma 3's sliding-window layers keep a
    shorter cache, measured as it is."""
    meta = check_gguf(float_gguf)["metadata"]
    arch = meta["general.architecture"]
    layers = int(meta[f"{arch}.block_count"])
    period = min(layer_period(arch), layers)
    # one layer's run holds about 1 MiB that two layers' do not yet (the allocator's first growth): two and four
    # periods are past it; a model of fewer layers is measured whole
    sizes = (2 * period, 4 * period) if layers >= 4 * period else (period, layers) if layers > period else (layers,)
    grown = []
    with tempfile.TemporaryDirectory(prefix="edgeq-standin-") as work:
        for n in sizes:
            path = Path(work) / f"standin-{n}.gguf"
            write_standin(float_gguf, path, n)
            grown.append(
                child.call(
                    "edgeq.bench:runtime_anon",
                    "measuring the runtime's buffers on a stand-in",
                    str(float_gguf),
                    setup=llama_setup(),
                    path=str(path),
                    n_prompt=n_prompt,
                    n_gen=n_gen,
                    threads=threads,
                    n_ctx=n_ctx,
                )
            )
    per_layer = (grown[-1] - grown[0]) / (sizes[-1] - sizes[0]) if len(sizes) > 1 else 0.0
    return RuntimeCost(fixed=grown[0] - per_layer * sizes[0], per_layer=per_layer, layers=layers)
