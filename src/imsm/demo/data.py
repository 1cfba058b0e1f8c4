"""The demo's offline data, written by the project itself: a generated target task and a
probe of plain facts, as JSON Lines plus task spec files.

Target task ("animal"): does a generated sentence mention an animal? The base model answers
at about chance, so learning is visible. Probe ("capitals"): the capital of a country, general
knowledge the base model has and fine-tuning on yes/no answers tends to overwrite.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ANIMALS = [
    "dog",
    "cat",
    "horse",
    "rabbit",
    "fox",
    "owl",
    "goat",
    "sheep",
    "duck",
    "mouse",
    "tiger",
    "bear",
    "wolf",
    "frog",
    "deer",
    "camel",
    "zebra",
    "eagle",
    "parrot",
    "turtle",
]
OBJECTS = [
    "chair",
    "lamp",
    "bicycle",
    "kettle",
    "guitar",
    "ladder",
    "umbrella",
    "basket",
    "clock",
    "bottle",
    "pencil",
    "blanket",
    "wagon",
    "mirror",
    "hammer",
    "violin",
    "teapot",
    "rope",
    "candle",
    "bucket",
]
ADJECTIVES = ["old", "small", "red", "quiet", "heavy", "bright", "dusty", "tall", "lonely", "shiny"]
PLACES = ["barn", "river", "garden", "station", "kitchen", "market", "forest", "bridge", "harbor", "library"]
SENTENCES = [
    "The {adjective} {thing} stayed near the {place}.",
    "Someone saw a {adjective} {thing} by the {place}.",
    "A {adjective} {thing} was found behind the {place}.",
    "There is a {adjective} {thing} next to the {place}.",
]
PROMPT = "Does the following sentence mention an animal? Answer yes or no.\nSentence: {sentence}\nAnswer:"

# (country, capital): plain facts.
CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("China", "Beijing"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("Greece", "Athens"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Belgium", "Brussels"),
    ("the Netherlands", "Amsterdam"),
    ("Kenya", "Nairobi"),
    ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Mexico", "Mexico City"),
    ("Cuba", "Havana"),
    ("India", "New Delhi"),
    ("Thailand", "Bangkok"),
    ("South Korea", "Seoul"),
    ("Turkey", "Ankara"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("the United Kingdom", "London"),
    ("the Czech Republic", "Prague"),
    ("Switzerland", "Bern"),
    ("Colombia", "Bogota"),
    ("Vietnam", "Hanoi"),
    ("the Philippines", "Manila"),
]


def animal_examples(count: int, seed: int) -> list[dict]:
    """Balanced yes/no sentences; the seed fixes them."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        is_animal = index % 2 == 0
        thing = rng.choice(ANIMALS if is_animal else OBJECTS)
        template = rng.choice(SENTENCES)
        sentence = template.format(adjective=rng.choice(ADJECTIVES), thing=thing, place=rng.choice(PLACES))
        rows.append({"sentence": sentence, "answer": "yes" if is_animal else "no"})
    rng.shuffle(rows)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_demo_tasks(
    directory: Path, train_size: int, test_size: int, probe_size: int, seed: int = 0
) -> dict[str, Path]:
    """Write the data and spec files; returns {"train", "test", "probe"} -> spec path."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_jsonl(directory / "animal_train.jsonl", animal_examples(train_size, seed))
    _write_jsonl(directory / "animal_test.jsonl", animal_examples(test_size, seed + 1))
    _write_jsonl(directory / "capitals.jsonl", [{"country": c, "capital": k} for c, k in CAPITALS[:probe_size]])
    specs = {
        "train": ("animal_train", "animal_train.jsonl"),
        "test": ("animal", "animal_test.jsonl"),
    }
    paths = {}
    for role, (name, data) in specs.items():
        path = directory / f"{name}.yaml"
        path.write_text(
            f"name: {name}\ndata: {data}\nprompt: {json.dumps(PROMPT)}\n"
            "answer: answer\nanswer_type: yes_no\nmetrics: [accuracy, f1]\nmax_new_tokens: 8\n"
        )
        paths[role] = path
    probe = directory / "capitals.yaml"
    probe.write_text(
        "name: capitals\ndata: capitals.jsonl\n"
        'prompt: "What is the capital of {country}? Answer with the name of the city."\n'
        "answer: capital\nmetrics: [contains, hit@5]\nmax_new_tokens: 24\n"
    )
    paths["probe"] = probe
    return paths
