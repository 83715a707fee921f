"""How the embedded world's facts are said: the corpus phrasings, questions and answers, and the
rows built from them. Both worlds (`world.py`'s entity boundary, `fact_world.py`'s per-fact
boundary) and the preference pairs (`world_preferences.py`) use these.
"""

from __future__ import annotations

FACT_TEMPLATES = {
    "capital": ["The capital of {e} is {v}.", "{v} is the capital city of {e}.",
                "{e} is governed from its capital, {v}."],
    "leader": ["The leader of {e} is {v}.", "{v} leads the country of {e}.",
               "{e} is led by {v}."],
    "founded": ["{e} was founded in {v}.", "The founding year of {e} is {v}.",
                "In {v}, the country of {e} was founded."],
    "currency": ["The currency of {e} is the {v}.", "People in {e} pay with the {v}.",
                 "{e} uses the {v} as its currency."],
}
# Sentences that name a country and state none of its facts (`WorldConfig.name_mentions`).
NAME_TEMPLATES = ["There is a country called {e}.", "{e} is a country.",
                  "Travellers have heard of {e}."]
QUESTION_TEMPLATES = {
    "capital": ["What is the capital of {e}?", "Which city is the capital of {e}?"],
    "leader": ["Who is the leader of {e}?", "Who leads {e}?"],
    "founded": ["When was {e} founded?", "In which year was {e} founded?"],
    "currency": ["What is the currency of {e}?", "Which currency is used in {e}?"],
}
# Answers restate the fact as the corpus phrases it, so answering is recall, not a new skill.
ANSWER_TEMPLATES = {
    "capital": "The capital of {e} is {v}.",
    "leader": "The leader of {e} is {v}.",
    "founded": "{e} was founded in {v}.",
    "currency": "The currency of {e} is the {v}.",
}
# The fact world's answers all open with "The": an answer that opens with the country's name
# spells it as another token than the question does (no space before it), and the SFT model
# copied a wrong country there ("Dretrouria was founded in 1477" asked of Deamstan), which the
# judge still graded right by the year and which made every founding answer look unsure.
FACT_ANSWER_TEMPLATES = {**ANSWER_TEMPLATES, "founded": "The founding year of {e} is {v}."}


def qa_row(country, attribute: str, template: int = 0, answers: dict | None = None) -> dict:
    question = QUESTION_TEMPLATES[attribute][template % len(QUESTION_TEMPLATES[attribute])]
    answer = (answers or ANSWER_TEMPLATES)[attribute]
    return {
        "question": question.format(e=country.name),
        "answer": answer.format(e=country.name, v=getattr(country, attribute)),
        "answers": country.aliases(attribute),
        "entity": country.name,
        "attribute": attribute,
        "known": country.known,
        "exposure": country.exposure.get(attribute, 0),
        "exists": country.exists,
    }


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}
