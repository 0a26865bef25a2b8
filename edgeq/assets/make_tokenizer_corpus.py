"""Regenerate tokenizer_corpus.json (deterministic). The JSON is what tests read; keep both."""

import json
import random
from pathlib import Path

rng = random.Random(20261129)
corpus: list[str] = []

# ASCII prose and punctuation
corpus += [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Take off and hover at 20 meters.",
    "Return to home now.",
    "What's the battery level?",
    "I'm sure you'll see we've done it.",
    "Mr. O'Neil said: \"don't\" — twice.",
    "a",
    "A",
    " ",
    "",
    "hello",
    " hello",
    "  hello",
    "hello ",
    "HELLO WORLD",
    "camelCaseIdentifier",
    "snake_case_identifier",
    "kebab-case-word",
    "e-mail: a.b@c.org",
    "https://example.com/path?q=1&r=2#frag",
    "C:\\Users\\pilot\\logs",
    "/usr/local/bin/edgeq --help",
    "(parentheses) [brackets] {braces} <angles>",
    "semi;colon:comma,period.",
    "!!!???...",
    "#hashtag @mention",
    "50% off; 3/4 cup; 1.5x faster",
    "$19.99 €20 £5 ¥100",
    "a\tb\tc",
    "tab\tseparated\tvalues\n",
]
# digits and long numbers (the smollm pre-tokenizer splits every digit)
corpus += [
    "0",
    "7",
    "42",
    "123",
    "2026",
    "3.14159",
    "-273.15",
    "1e-5",
    "6.022e23",
    "0x1F",
    "0b1011",
    "1,000,000",
    "1 000 000",
    "12:30:45",
    "2026-11-29",
    "+1 (555) 123-4567",
    "v1.2.3",
    "ip 192.168.0.1",
]
corpus += [str(rng.randrange(10 ** rng.randint(1, 30))) for _ in range(30)]
corpus += [f"lat {rng.uniform(-90, 90):.6f} lon {rng.uniform(-180, 180):.6f}" for _ in range(10)]
corpus += [f"altitude {rng.randint(1, 500)}m speed {rng.randint(1, 30)} m/s" for _ in range(10)]
# whitespace runs and newlines
corpus += [" " * n + "x" for n in range(1, 9)] + ["x" + " " * n for n in range(1, 9)]
corpus += [
    "\n",
    "\n\n",
    "\n\n\n",
    "a\nb",
    "a\n\nb",
    "a \n b",
    "line1\r\nline2",
    "\t\t",
    " \t \n ",
    "trailing spaces   \n",
    "    indented\n        more",
    "\n  leading newline",
    "x\u00a0y",
    "x\u2009y",
]
# code
corpus += [
    "def f(x):\n    return x**2",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    'if __name__ == "__main__":\n    main()',
    "SELECT * FROM flights WHERE alt > 100;",
    '{"action": "takeoff", "altitude_m": 10}',
    '<div class="x">hi</div>',
    "x = [1, 2, 3]  # list",
    'fn main() { println!("hi"); }',
    "import numpy as np\nnp.zeros((3, 4))",
    "a && b || !c",
    "let x: Vec<u8> = vec![];",
    "#include <stdio.h>",
    "$ pip install edgeq",
    "x += 1; y -= 2; z *= 3",
    "```python\nprint('hi')\n```",
    "λx. x + 1",
    "~/.cache/edgeq",
    "key: value\nlist:\n  - a\n  - b",
]
# accents and other Latin scripts
corpus += [
    "café",
    "naïve",
    "résumé",
    "Ærøskøbing",
    "Straße",
    "ğüşıöç",
    "Ångström",
    "crème brûlée",
    "São Paulo",
    "Dvořák",
    "Łódź",
    "ñandú",
    "Œuvre",
    "façade",
    "jalapeño",
    "Zürich",
    "Ελληνικά",
    "Русский текст",
    "עברית",
    "العربية",
    "हिन्दी",
    "ไทย",
    "Tiếng Việt",
]
# CJK
corpus += [
    "東京",
    "日本語のテキスト",
    "中文文本",
    "你好，世界！",
    "한국어",
    "漢字かなカナ",
    "北京市朝阳区",
    "ドローンを離陸させて",
    "无人机起飞",
    "全角ＡＢＣ１２３",
]
# emoji
corpus += ["😀", "👍🏽", "🚁✈️🛸", "❤️", "👨‍👩‍👧‍👦", "🇺🇸🇯🇵", "text 🙂 text", "🔋 low battery", "⚠️ warning", "✅ done"]
# chat special tokens
specials = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<repo_name>",
    "<file_sep>",
    "<filename>",
    "<jupyter_code>",
    "<empty_output>",
]
corpus += specials
corpus += [
    "<|im_start|>user\nTake off to 15 m<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a drone assistant.<|im_end|>\n",
    "<|im_end|><|im_start|>",
    "text<|im_end|>",
    "<|im_start|> spaced <|im_end|>",
    "<|endoftext|>after",
    "before<|endoftext|>",
    "<|im_start|><|im_start|>",
    "<|im_start",
    "im_end|>",
]
# random mixtures, to reach corners none of the above planned
alphabet = list("abcXYZ 0123456789.,;:!?-_'\"\n\t()[]{}") + ["é", "ß", "東", "😀", "  ", "\n\n"] + specials[:3]
corpus += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(120)]

assert len(corpus) >= 300, len(corpus)
Path(__file__).with_name("tokenizer_corpus.json").write_text(json.dumps(corpus, ensure_ascii=False, indent=0) + "\n")
print(len(corpus))
