"""Deterministic generator of a free-text task: a drone fleet's maintenance desk answers technicians.

Run `python examples/maintenance/generate.py` to rewrite train.jsonl and test.jsonl (frozen copies
are committed; the generator shows how they were made). Written by the edgeq team for its tests
and examples; the same licence as edgeq (Apache-2.0).

Every answer is one or two plain sentences in the desk's voice — short, factual, always naming the
part and the interval or the figure — so the task is scored by chrF, not by parsing. The facts
come from one table (FACTS); questions are phrased many ways, and the held-out questions use
phrasings the training data never shows, so the score measures the facts learnt, not the wording.
"""

import json
import random
from pathlib import Path

SYSTEM = "You are the maintenance desk of the Kestrel drone fleet. Answer in one or two short sentences."
HERE = Path(__file__).parent

# part → (what to do, interval or figure, a detail)
FACTS = {
    "propellers": ("replace", "every 50 flight hours", "or at once after any strike or visible chip"),
    "motor bearings": ("inspect", "every 100 flight hours", "and replace them if they rattle when spun by hand"),
    "battery packs": ("retire", "after 300 charge cycles", "or when a cell drifts more than 0.1 V from the others"),
    "gimbal": ("recalibrate", "after every firmware update", "with the drone level and the camera cap off"),
    "compass": ("calibrate", "at every new flying site", "away from cars, rebar and power lines"),
    "air filters": ("clean", "every 20 flight hours", "with dry compressed air, never water"),
    "landing gear": ("check", "before each flight day", "for cracks at the hinge and loose screws"),
    "firmware": ("update", "within a week of each fleet release", "one drone first, the rest after a test flight"),
    "GPS antenna": ("inspect", "every 200 flight hours", "for a loose connector and a cracked cover"),
    "arm locks": ("test", "before every flight", "by pulling each arm outwards until the latch holds"),
    "ESC boards": ("inspect", "every 150 flight hours", "for discoloured solder and swollen capacitors"),
    "camera lens": ("clean", "before each flight day", "with a microfibre cloth and lens fluid only"),
}
TRAIN_ASK = [
    "How often should I service the {p}?",
    "When do the {p} need attention?",
    "What is the maintenance rule for the {p}?",
    "{P}: what do we do and when?",
    "Remind me about the {p}.",
    "what's the schedule for the {p}",
]
TEST_ASK = [
    "Quick question about the {p}, what's the interval?",
    "Our checklist lost the line on the {p}. What was it?",
]


def answer(part: str) -> str:
    do, when, detail = FACTS[part]
    return f"{do.capitalize()} the {part} {when}, {detail}."


def example(question: str, reply: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": reply},
        ]
    }


def main() -> None:
    r = random.Random(7)  # the order of the training lines
    train, test = [], []
    for part in FACTS:
        for ask in TRAIN_ASK:
            for greeting in ("", "Hi, ", "Hello desk, "):
                q = ask.format(p=part, P=part.capitalize())
                train.append(example(greeting + (q[0].lower() + q[1:] if greeting else q), answer(part)))
        for ask in TEST_ASK:
            test.append(example(ask.format(p=part, P=part.capitalize()), answer(part)))
    r.shuffle(train)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        (HERE / name).write_text("".join(json.dumps(x) + "\n" for x in rows))


if __name__ == "__main__":
    main()
