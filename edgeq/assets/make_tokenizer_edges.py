"""Regenerate tokenizer_edges.json (deterministic): what breaks tokenizers, beside tokenizer_corpus.json's broad
sample. The parity gate runs both, and each tokenizer's own special tokens typed as text (export/gguf.py)."""

import json
from pathlib import Path

edges: list[str] = []
# digit runs of 1–6: Llama-3 groups them by three, SmolLM2 and Qwen2 split every digit
runs = ["123456"[:n] for n in range(1, 7)] + ["9" * n for n in range(1, 7)] + ["0" * n for n in range(1, 7)]
edges += runs + [f"a{r}b" for r in runs] + [f" {r}" for r in runs] + [f"{r} " for r in runs]
edges += [" ".join(runs), ",".join(runs), "x1 22 333 4444 55555 666666x", "1234567", "12.3456", "-123456"]
# leading and trailing spaces, tabs, CR and LF, around words, digits and punctuation
for word in ("word", "42", "?!", "東京", "🙂"):
    edges += [" " * n + word for n in range(1, 5)] + [word + " " * n for n in range(1, 5)]
    edges += [f"\t{word}", f"{word}\t", f"\t\t {word}", f"{word}\r\n", f"\r\n{word}", f"{word}\r", f"\n\r{word}"]
edges += ["\r", "\r\n", "\n\r", "\r\r\n\n", "a\rb", "a\r\n\r\nb", " \r\n ", "\t\r\n\t", "a \t b", "a\t \tb", "  \t  "]
# many scripts, combining marks, joiners, direction marks
edges += [
    "Ἀθῆναι καὶ Σπάρτη",
    "Съешь же ещё этих мягких булок",
    "Հայերեն լեզու",
    "ქართული ენა",
    "שָׁלוֹם עוֹלָם",
    "مرحبا بالعالم ١٢٣",
    "नमस्ते दुनिया १२३",
    "বাংলা ভাষা",
    "தமிழ் மொழி",
    "ภาษาไทยง่ายนิดเดียว",
    "ພາສາລາວ",
    "ភាសាខ្មែរ",
    "བོད་ཡིག",
    "ሰላም ለዓለም",
    "한국어 문장입니다",
    "ひらがな カタカナ 漢字",
    "𠀀𠀁 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "e\u0301 a\u0308 n\u0303",
    "Z\u0351\u0310a\u0346\u035bl\u0352go",
    "a\u200db",
    "a\u200bb",
    "\u200fRTL\u200e",
    "\ufeffBOM",
    "ﬁ ﬂ ℌ ①",
]
# emoji: skin tones, joiner sequences, flags, keycaps, variation selectors
edges += ["👋🏻👋🏿", "🧑‍🚀", "👩‍❤️‍💋‍👨", "🏳️‍🌈", "🇫🇷🇩🇪🇧🇷", "1️⃣#️⃣", "☀︎☀️", "🚁 at 120 m ✅", "😀😀😀😀😀😀"]
# a byte sequence that is not valid UTF-8, as text reaches a model: replacement characters, Latin-1 mojibake
broken = b"caf\xe9 \xff\xfe\x80 ok \xc3\x28 \xe2\x82 end"
edges += [broken.decode("utf-8", "replace"), broken.decode("latin-1"), "Ã©tÃ© Ã¼ber", "\ufffd\ufffd"]

assert len(edges) == len(set(edges)), "duplicates"
Path(__file__).with_name("tokenizer_edges.json").write_text(json.dumps(edges, ensure_ascii=False, indent=0) + "\n")
print(len(edges))
