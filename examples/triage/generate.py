"""Deterministic generator of a label task: a drone fleet's triage desk files each pilot report under one label.

Run `python examples/triage/generate.py` to rewrite train.jsonl and test.jsonl (frozen copies are committed;
the generator shows how they were made). Written by the edgeq team for its tests and examples; the same
licence as edgeq (Apache-2.0).

The answer is one word, a label (the keys of SYMPTOMS), so the task is scored by exact match. Training
reports use four symptoms of each label in eight wordings; the held-out reports use two wordings the training
data never shows, and each label's fifth symptom, which training never shows: the score measures the labels
learnt, not the sentences.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent

# label → symptoms; the last of each is held out (it appears only in test.jsonl)
SYMPTOMS = {
    "battery": ["the pack got hot after landing", "voltage sagged to 3.4 V per cell", "the charger refused a pack",
                "flight time dropped to nine minutes", "one cell reads 0.3 V below the others"],
    "propulsion": ["the rear left motor stuttered on takeoff", "a propeller has a chipped tip",
                   "loud grinding from motor three", "it yawed hard when I throttled up", "an ESC smelled burnt"],
    "navigation": ["the GPS lost lock over the field", "the compass asked for calibration twice",
                   "it drifted sideways in position hold", "the home point was set 40 m off",
                   "the heading on the map spun around"],
    "camera": ["the video feed was blurry", "the gimbal tilted on its own", "photos came out purple",
               "the SD card stopped recording", "the lens fogged up inside"],
    "radio": ["the controller lost link at 300 m", "the video link kept dropping frames",
              "telemetry froze on the ground station", "the remote showed weak signal next to the drone",
              "the controller would not pair after the update"],
    "airframe": ["an arm lock does not click shut", "there is a crack near the landing gear hinge",
                 "a screw fell out of the top shell", "the canopy rattles in flight", "the arm flexes when lifted"],
}  # fmt: skip
LABELS = tuple(SYMPTOMS)
SYSTEM = f"You triage pilot reports for the Kestrel drone fleet. Answer with one label: {', '.join(LABELS)}."
TRAIN_SAY = [
    "{s}.",
    "After today's flight: {s}.",
    "Pilot note — {s}.",
    "Hi, {s}, what should I file this under?",
    "Survey run 12, {s}.",
    "quick one: {s}",
    "Morning check found that {s}.",
    "Reporting an issue on drone 7: {s}.",
]
TEST_SAY = [
    "Logging this from the field: {s}.",
    "Not urgent, but {s}.",
]


def example(report: str, label: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": report[0].upper() + report[1:]},
            {"role": "assistant", "content": label},
        ]
    }


def main() -> None:
    r = random.Random(11)  # the order of the training lines
    train, test = [], []
    for label, symptoms in SYMPTOMS.items():
        for s in symptoms[:-1]:
            train += [example(say.format(s=s), label) for say in TRAIN_SAY]
        test += [example(say.format(s=s), label) for s in symptoms for say in TEST_SAY]
    r.shuffle(train)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        (HERE / name).write_text("".join(json.dumps(x) + "\n" for x in rows))


if __name__ == "__main__":
    main()
