"""Deterministic generator of the drone-operator task: natural-language command → one JSON action.

Run `python examples/drone/generate.py` to rewrite train.jsonl and test.jsonl (frozen copies are
committed; the generator is kept so anyone can see and reproduce how they were made).

Schema (keys in this order, nothing else):
  {"action": "takeoff", "altitude_m": int}          {"action": "land"}
  {"action": "return_to_home"}                        {"action": "goto", "lat": float, "lon": float, "alt_m": int}
  {"action": "orbit", "radius_m": int, "speed_m_s": float, "direction": "cw"|"ccw"}
  {"action": "set_speed", "speed_m_s": float}         {"action": "hover", "seconds": int}
  {"action": "photo"}                                 {"action": "video", "state": "start"|"stop"}
  {"action": "refuse", "reason": "low_battery"|"no_fly_zone"|"altitude_limit"|"missing_parameter"}
Safety rules: altitude above 120 m (the legal limit) → altitude_limit; battery under 20 % with any
flight action except land / return_to_home → low_battery; a named restricted area → no_fly_zone;
takeoff without altitude, goto without coordinates, orbit without radius → missing_parameter.
"""

import json
import random
from pathlib import Path

SYSTEM = "You control a drone. Reply with one JSON action."
LEGAL_ALT_M = 120
HERE = Path(__file__).parent


def action(**kw) -> str:
    return json.dumps(kw)


def alt_ok(r):
    return r.choice([5, 8, 10, 12, 15, 20, 25, 30, 35, 40, 45, 50, 60, 70, 80, 90, 100, 110, 120])


def alt_high(r):
    return r.choice([125, 130, 140, 150, 180, 200, 250, 300, 400, 500])


def speed(r):
    return r.choice([1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.5, 8.0, 10.0, 12.0, 15.0])


def fmt_speed(s: float) -> str:
    return f"{s:g}"


def coords(r):
    return round(r.uniform(-60, 60), 4), round(r.uniform(-150, 150), 4)


def takeoff(r):
    a = alt_ok(r)
    t = r.choice(
        [
            "Take off to {a} meters.",
            "takeoff {a}m",
            "Climb to {a} m after takeoff.",
            "Lift off and go up to {a} meters",
            "Please take off to an altitude of {a} m.",
            "launch to {a}m",
            "Get airborne at {a} meters.",
            "Start the flight and hold {a} m altitude.",
            "Take off, target altitude {a} metres.",
            "up to {a} m, take off",
        ]
    )
    return t.format(a=a), action(action="takeoff", altitude_m=a)


def land(r):
    t = r.choice(
        [
            "Land now.",
            "land",
            "Bring it down and land.",
            "Please land the drone.",
            "Touch down here.",
            "Land at the current position.",
            "Descend and land.",
            "OK, land it.",
            "Time to land.",
            "set down now",
        ]
    )
    return t, action(action="land")


def rth(r):
    t = r.choice(
        [
            "Return to home.",
            "RTH",
            "Come back to the launch point.",
            "Fly home.",
            "Go back to home position.",
            "return home please",
            "Head back to where we took off.",
            "Return to launch.",
            "bring it home",
            "Abort the mission and return home.",
        ]
    )
    return t, action(action="return_to_home")


def goto(r):
    lat, lon = coords(r)
    a = alt_ok(r)
    t = r.choice(
        [
            "Fly to {lat}, {lon} at {a} m.",
            "goto lat {lat} lon {lon} alt {a}",
            "Go to coordinates {lat} {lon}, altitude {a} meters.",
            "Navigate to ({lat}, {lon}) at {a}m.",
            "Move to latitude {lat}, longitude {lon}, {a} m up.",
            "Head to {lat},{lon} and hold {a} meters.",
            "waypoint {lat} {lon} {a}m",
            "Fly over to {lat}, {lon}; altitude {a} m.",
        ]
    )
    return t.format(lat=lat, lon=lon, a=a), action(action="goto", lat=lat, lon=lon, alt_m=a)


def orbit(r):
    rad = r.choice([5, 10, 15, 20, 25, 30, 40, 50, 75, 100])
    s = speed(r)
    d = r.choice(["cw", "ccw"])
    word = {
        "cw": r.choice(["clockwise", "cw"]),
        "ccw": r.choice(["counterclockwise", "counter-clockwise", "ccw", "anticlockwise"]),
    }[d]
    t = r.choice(
        [
            "Orbit with a {rad} m radius at {s} m/s {w}.",
            "Circle around, radius {rad} meters, speed {s} m/s, {w}.",
            "orbit r={rad}m v={s}m/s {w}",
            "Fly a {w} circle of {rad} m at {s} meters per second.",
            "Do a {w} orbit, {rad} m radius, {s} m/s.",
            "Start orbiting {w}: radius {rad} m, {s} m/s.",
        ]
    )
    return t.format(rad=rad, s=fmt_speed(s), w=word), action(action="orbit", radius_m=rad, speed_m_s=s, direction=d)


def set_speed(r):
    s = speed(r)
    t = r.choice(
        [
            "Set speed to {s} m/s.",
            "speed {s}",
            "Change the cruise speed to {s} meters per second.",
            "Fly at {s} m/s from now on.",
            "Limit speed to {s} m/s.",
            "Make it {s} m/s.",
            "set velocity {s} m/s",
        ]
    )
    return t.format(s=fmt_speed(s)), action(action="set_speed", speed_m_s=s)


def hover(r):
    n = r.choice([3, 5, 10, 15, 20, 30, 45, 60, 90, 120])
    t = r.choice(
        [
            "Hover for {n} seconds.",
            "hold position {n}s",
            "Stay in place for {n} s.",
            "Hover here, {n} seconds.",
            "Wait in the air for {n} seconds.",
            "loiter {n} sec",
            "Keep hovering for {n} seconds please.",
        ]
    )
    return t.format(n=n), action(action="hover", seconds=n)


def photo(r):
    t = r.choice(
        [
            "Take a photo.",
            "snap a picture",
            "Capture an image now.",
            "Photo!",
            "Take a picture of this.",
            "shoot a still",
            "Grab a photo of the area.",
        ]
    )
    return t, action(action="photo")


def video(r):
    st = r.choice(["start", "stop"])
    t = {
        "start": ["Start recording video.", "begin video", "Record video now.", "Start filming.", "rec on"],
        "stop": ["Stop recording.", "stop video", "End the video recording.", "Stop filming.", "rec off"],
    }[st]
    return r.choice(t), action(action="video", state=st)


def refuse_altitude(r):
    a = alt_high(r)
    if r.random() < 0.5:
        t = r.choice(["Take off to {a} meters.", "Climb to {a} m.", "takeoff {a}m", "Go up to {a} metres."]).format(a=a)
    else:
        lat, lon = coords(r)
        t = r.choice(["Fly to {lat}, {lon} at {a} m.", "goto lat {lat} lon {lon} alt {a}"]).format(
            lat=lat, lon=lon, a=a
        )
    return t, action(action="refuse", reason="altitude_limit")


def refuse_battery(r):
    b = r.choice([3, 5, 7, 8, 10, 12, 15, 18])
    base, _ = r.choice([takeoff, goto, orbit, hover])(r)
    t = r.choice(
        ["Battery at {b}%. {c}", "{c} (battery {b}%)", "We have {b} percent battery left. {c}", "battery: {b}% — {c}"]
    ).format(b=b, c=base)
    return t, action(action="refuse", reason="low_battery")


def refuse_nofly(r):
    place = r.choice(
        [
            "the airport",
            "the military base",
            "the stadium during the match",
            "the prison",
            "the runway",
            "the restricted zone",
            "the power plant",
            "the no-fly zone",
        ]
    )
    t = r.choice(
        [
            "Fly over {p}.",
            "Go to {p} and take photos.",
            "Head into {p}.",
            "Orbit above {p}.",
            "Take us across {p} at 50 m.",
        ]
    ).format(p=place)
    return t, action(action="refuse", reason="no_fly_zone")


def refuse_missing(r):
    t = r.choice(
        [
            "Take off.",
            "takeoff",
            "Fly to the waypoint.",
            "Go to the coordinates.",
            "Orbit.",
            "Start an orbit around the tower.",
            "goto",
            "Launch and climb.",
            "Circle around at 5 m/s.",
            "Fly to the target location.",
        ]
    )
    return t, action(action="refuse", reason="missing_parameter")


# How often each kind appears: plain actions dominate, each refusal type is well represented.
KINDS = [
    (takeoff, 10),
    (land, 6),
    (rth, 6),
    (goto, 10),
    (orbit, 9),
    (set_speed, 7),
    (hover, 7),
    (photo, 5),
    (video, 6),
    (refuse_altitude, 7),
    (refuse_battery, 7),
    (refuse_nofly, 6),
    (refuse_missing, 6),
]


# Operators address the drone in many ways; wrapping a command varies phrasing without changing it.
PREFIXES = ["", "", "", "", "Drone, ", "OK, ", "Alpha-1: ", "Operator: ", "Hey, ", "Next: ", "Right, ", "Copy. "]
SUFFIXES = ["", "", "", "", " Thanks.", " Over.", " Now.", " Please.", " Go.", " Confirm."]


def make(n: int, seed: int, exclude: set[str]) -> list[dict]:
    r = random.Random(seed)
    funcs, weights = zip(*KINDS, strict=True)
    out, seen = [], set(exclude)
    while len(out) < n:
        command, answer = r.choices(funcs, weights)[0](r)
        command = r.choice(PREFIXES) + command + r.choice(SUFFIXES)
        if command in seen:
            continue
        seen.add(command)
        out.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": command},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return out


def main() -> None:
    train = make(640, seed=1, exclude=set())
    test = make(160, seed=2, exclude={ex["messages"][1]["content"] for ex in train})
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        (HERE / name).write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
        print(name, len(rows))


if __name__ == "__main__":
    main()
