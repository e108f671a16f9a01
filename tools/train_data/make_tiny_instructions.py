#!/usr/bin/env python3
"""Writes tiny_instructions.jsonl: the instruction data of `bazel run //tools:train`'s default
run, in the self_instruct record format ({"prompt", "completion"}). Short templated facts a tiny
model can learn in a few CPU minutes: capitals, opposites, plurals, one-digit sums, colours.

    python3 make_tiny_instructions.py > tiny_instructions.jsonl
"""
import json
import random

CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
            "China": "Beijing", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago",
            "Canada": "Ottawa", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Greece": "Athens",
            "Portugal": "Lisbon", "Ireland": "Dublin", "Austria": "Vienna", "Russia": "Moscow", "India": "Delhi",
            "Cuba": "Havana", "Iran": "Tehran", "Turkey": "Ankara", "Mexico": "Mexico City", "Brazil": "Brasilia"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "left": "right", "open": "closed",
             "early": "late", "happy": "sad", "light": "dark", "old": "new", "high": "low", "hard": "soft",
             "long": "short", "full": "empty", "rich": "poor", "wet": "dry", "loud": "quiet", "first": "last"}
PLURALS = {"cat": "cats", "dog": "dogs", "box": "boxes", "child": "children", "mouse": "mice", "city": "cities",
           "tooth": "teeth", "man": "men", "leaf": "leaves", "bus": "buses", "foot": "feet", "story": "stories",
           "knife": "knives", "goose": "geese", "baby": "babies", "key": "keys"}
COLOURS = {"the sky": "blue", "grass": "green", "snow": "white", "coal": "black", "a banana": "yellow",
           "blood": "red", "an orange": "orange", "a lemon": "yellow", "milk": "white", "the sea": "blue"}
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
          "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]


def main():
    records = []
    for country, city in CAPITALS.items():
        records.append({"prompt": f"The capital of {country} is", "completion": f" {city}."})
    for word, other in OPPOSITES.items():
        records.append({"prompt": f"The opposite of {word} is", "completion": f" {other}."})
        records.append({"prompt": f"The opposite of {other} is", "completion": f" {word}."})
    for noun, plural in PLURALS.items():
        records.append({"prompt": f"The plural of {noun} is", "completion": f" {plural}."})
    for thing, colour in COLOURS.items():
        records.append({"prompt": f"The colour of {thing} is", "completion": f" {colour}."})
    for a in range(10):
        for b in range(10):
            records.append({"prompt": f"{DIGITS[a]} plus {DIGITS[b]} is", "completion": f" {DIGITS[a + b]}."})
    random.Random(7).shuffle(records)
    for r in records:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
