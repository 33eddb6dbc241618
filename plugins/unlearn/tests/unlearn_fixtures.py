"""Shared test data of the unlearn plugin (a module of its own: the name ``conftest`` is
taken by the repository's tests/conftest.py when both folders run together).

A small fact file in CounterFact's two schemas: three topics with four or more answers,
one with three (too few for a four-way question), and flat records whose template maps to
a relation."""

from __future__ import annotations

import json
from pathlib import Path

TOPICS = {
    "P103": (
        "The mother tongue of {} is",
        [
            ("Danielle Darrieux", "French"),
            ("Thomas Joannes Stieltjes", "Dutch"),
            ("Leo Tolstoy", "Russian"),
            ("Pablo Neruda", "Spanish"),
            ("Dante Alighieri", "Italian"),
            ("Charles Dickens", "English"),
        ],
    ),
    "P30": (
        "{} is located in the continent of",
        [
            ("Angola", "Africa"),
            ("Mongolia", "Asia"),
            ("Portugal", "Europe"),
            ("Peru", "South America"),
            ("Canada", "North America"),
        ],
    ),
    "P176": (
        "{} is produced by",
        [
            ("Toyota Corolla", "Toyota"),
            ("Honda Civic", "Honda"),
            ("Nissan Leaf", "Nissan"),
            ("Ford Mustang", "Ford"),
            ("Fiat Panda", "Fiat"),
        ],
    ),
    "P140": (
        "The official religion of {} is",
        [("Saudi Arabia", "Islam"), ("Vatican City", "Christianity"), ("Bhutan", "Buddhism"), ("Iran", "Islam")],
    ),
}
#: the same template as P103 in EasyEdit's flat schema: mapped to P103
FLAT = [("Miguel de Cervantes", "The mother tongue of {} is", "Spanish", "English")]


def write_facts(folder: Path) -> Path:
    records = []
    case = 0
    for rel, (template, facts) in TOPICS.items():
        answers = sorted({a for _, a in facts})
        for subject, answer in facts:
            new = next(a for a in answers if a != answer)
            records.append(
                {
                    "case_id": case,
                    "requested_rewrite": {
                        "prompt": template,
                        "relation_id": rel,
                        "subject": subject,
                        "target_new": {"str": new},
                        "target_true": {"str": answer},
                    },
                    "paraphrase_prompts": [],
                    "neighborhood_prompts": [],
                }
            )
            case += 1
    (folder / "counterfact").mkdir(parents=True, exist_ok=True)
    (folder / "counterfact" / "counterfact.json").write_text(json.dumps(records), encoding="utf-8")
    flat = [
        {
            "case_id": 1000 + i,
            "prompt": template.format(subject),
            "subject": subject,
            "target_new": new,
            "ground_truth": true,
        }
        for i, (subject, template, true, new) in enumerate(FLAT)
    ]
    (folder / "counterfact" / "counterfact-edit.json").write_text(json.dumps(flat), encoding="utf-8")
    return folder
