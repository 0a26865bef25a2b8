"""What a crafted GGUF header costs edgeq's check, against reading the file and against gguf-py's reader.

    python benchmarks/gguf_header_check.py [--mib 200] [--strings 2000000] [--landed OLD_ggufcheck.py]

The file holds no tensors and a metadata block built to be slow to parse: one UINT8 array of --mib MiB and one
array of --strings empty strings (each string is a step of any parser). edgeq's check (ggufcheck.check_gguf)
must cost about what reading the file costs; the goal in hostile inputs round 3 was "linear in the file's size,
with a small constant". Prints each time (best of --runs) and the ratios.
"""

import argparse
import importlib.util
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeq.ggufcheck import _CHECKED, check_gguf  # noqa: E402


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def crafted(path: Path, mib: int, strings: int) -> int:
    kv = _s("general.architecture") + struct.pack("<I", 8) + _s("llama")
    kv += _s("crafted.bytes") + struct.pack("<IIQ", 9, 0, mib << 20) + b"\0" * (mib << 20)  # ARRAY of UINT8
    kv += _s("crafted.strings") + struct.pack("<IIQ", 9, 8, strings) + struct.pack("<Q", 0) * strings  # of STRING
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 3) + kv
    path.write_bytes(data)
    return len(data)


def best(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--strings", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gguf-py", action="store_true", help="also time gguf-py's GGUFReader (slow: minutes)")
    ap.add_argument(
        "--landed",
        type=Path,
        default=None,
        help="another version's ggufcheck.py (git show REV:edgeq/ggufcheck.py > FILE): time its check too",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crafted.gguf"
        size = crafted(path, args.mib, args.strings)

        def check():
            _CHECKED.clear()  # the check memoizes by (path, size, mtime): time the parse, not the memo
            check_gguf(path)

        read = best(path.read_bytes, args.runs)
        ours = best(check, args.runs)
        print(f"file: {size / 2**20:.0f} MiB, a {args.mib} MiB byte array and {args.strings} strings")
        print(f"read the file           {read:8.3f} s")
        print(f"edgeq check_gguf        {ours:8.3f} s   {ours / read:6.1f}x reading it")
        if args.landed:
            spec = importlib.util.spec_from_file_location("landed_ggufcheck", args.landed)
            landed = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(landed)
            theirs = best(lambda: landed._check(path, size), 1)
            print(f"landed check ({args.landed.name})  {theirs:8.3f} s   {theirs / ours:6.1f}x edgeq's check now")
        if args.gguf_py:
            from gguf import GGUFReader

            theirs = best(lambda: GGUFReader(path), 1)
            print(f"gguf-py GGUFReader      {theirs:8.3f} s   {theirs / ours:6.1f}x edgeq's check")


if __name__ == "__main__":
    main()
