"""Rebuild harmbench_refusals.jsonl: HarmBench's contextual and copyright behaviors, each paired
with a refusal written for its semantic category (`python make_refusals.py` in this folder).

Only the behaviors that `dss.eval` does not score by default are used (it evaluates HarmBench's
`standard` ones, AdvBench, HEx-PHI and XSTest), so SafeInstr's safety data never holds an
evaluation prompt. Prompts are rendered as `dss.eval.benchmarks.harmbench` renders them
(context, a `---` rule, then the request); the refusal of a row is variant `row % 3` of its
category.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "harmbench" / "harmbench_behaviors_text_all.csv"
OUTPUT = HERE / "harmbench_refusals.jsonl"
FUNCTIONAL = ("contextual", "copyright")

REFUSALS = {
    "chemical_biological": (
        "I'm sorry, but I can't help with this. Explaining how to make, scale up or obtain dangerous drugs, "
        "toxins or pathogens could put people's lives at risk, so I won't provide steps, quantities or sources. "
        "If you are working in a lab, please follow your institution's safety officer and its approved protocols.",
        "I can't assist with that request. Details that make it easier to produce harmful chemical or biological "
        "substances can cause serious injury or death, whatever the reason for asking. I'm glad to talk about the "
        "general science, the history of these substances, or where to find help with substance use.",
        "No, I won't provide that. Synthesis routes, reaction conditions and handling tips for hazardous substances "
        "are exactly the kind of information that can be misused to hurt people. If you have a legitimate research "
        "need, the right path is through licensed professionals and regulated channels.",
    ),
    "cybercrime_intrusion": (
        "I'm sorry, but I can't help with that. Writing or adapting exploits, malware or intrusion techniques for "
        "systems you don't own is illegal and can do real damage to people and organisations. If you are doing "
        "authorised security work, I can discuss defensive practices and responsible disclosure instead.",
        "I can't assist with breaking into systems or accounts. Unauthorised access harms the people whose data and "
        "services depend on those systems, and it is a crime in most countries. I'm happy to explain how to protect "
        "a system against this kind of attack.",
        "That's not something I can help with. Guidance that makes an attack on software, networks or people's "
        "accounts easier could be used to steal data or disrupt services. If you want to learn security, legal "
        "capture-the-flag exercises and lab environments are a good place to start.",
    ),
    "misinformation_disinformation": (
        "I'm sorry, but I can't write that. The request asks me to make misleading content look credible, and "
        "spreading false claims can deceive people and cause real harm. I can help you write an accurate, "
        "well-sourced piece on the topic instead.",
        "I won't help create disinformation. Editing facts or crafting persuasive messages around false claims "
        "undermines people's ability to make informed decisions. If you'd like, I can summarise what reliable "
        "sources actually say about this subject.",
        "I can't do that. Producing content designed to mislead readers, even for a small audience, contributes "
        "to the spread of falsehoods. I'm glad to help with a fair and factual treatment of the topic.",
    ),
    "illegal": (
        "I'm sorry, but I can't help with that. It involves illegal activity that could hurt other people, and "
        "I won't give instructions or advice that would make it easier. If you are in a difficult situation, I can "
        "suggest legal options or organisations that may be able to help.",
        "I can't assist with this request because it asks for help with something unlawful. Committing or "
        "planning a crime can seriously harm others and yourself. Is there something legal I can help you with "
        "instead?",
        "No, I won't provide that. Helping someone break the law or evade the authorities is not something I can "
        "do. If you have questions about the law itself, a qualified lawyer is the best person to ask.",
    ),
    "harassment_bullying": (
        "I'm sorry, but I can't write that. Content meant to harass, intimidate or demean a person can cause real "
        "distress and harm. If there is a conflict you are trying to resolve, I can help you find a respectful "
        "way to communicate.",
        "I won't help with this. Targeting someone with abusive or threatening messages is harmful, whoever they "
        "are. I'm happy to help with something constructive instead.",
        "I can't assist with that request. Bullying and harassment hurt people and can have lasting effects. If "
        "you or someone you know is being harassed, support services and the platform's reporting tools can help.",
    ),
    "harmful": (
        "I'm sorry, but I can't help with that. It could lead to someone being hurt, and I won't provide content "
        "that encourages or enables harm. If you are struggling, please consider reaching out to someone you "
        "trust or a local support line.",
        "I can't assist with this request because it could cause harm to people. I'm glad to help with a safer "
        "alternative if you tell me more about what you need.",
        "No, I won't do that. Content like this can put people at risk. Let me know if there is something else "
        "I can help you with.",
    ),
    "lyrics": (
        "I'm sorry, but I can't reproduce the lyrics of that song: they are protected by copyright. I can give "
        "you a short summary of what the song is about, or tell you where to find the official lyrics.",
        "I can't provide the full lyrics, since they are copyrighted material. I'd be happy to talk about the "
        "song's themes, its history, or the artist instead.",
        "Sorry, I can't share those lyrics because doing so would reproduce copyrighted work. Licensed lyrics "
        "sites and streaming services usually show them alongside the song.",
    ),
    "book": (
        "I'm sorry, but I can't reproduce long passages from that book: it is protected by copyright. I can "
        "summarise the part you are interested in, or discuss its themes and characters.",
        "I can't provide that passage, since copying substantial parts of a copyrighted book isn't something I "
        "can do. I'm happy to give you a summary or a short analysis instead.",
        "Sorry, I can't generate that text because it would reproduce copyrighted material. Your library or a "
        "licensed e-book store is the best way to read the original.",
    ),
}


def refusal_kind(row: dict) -> str:
    """The refusal family of a behavior: its semantic category, or for copyright lyrics vs book."""
    if row["FunctionalCategory"] == "copyright":
        return "lyrics" if "lyrics" in row["Tags"] else "book"
    return row["SemanticCategory"]


def build() -> list[dict]:
    with open(SOURCE, newline="", encoding="utf-8") as f:
        behaviors = [r for r in csv.DictReader(f) if r["FunctionalCategory"] in FUNCTIONAL]
    rows = []
    for i, r in enumerate(behaviors):
        prompt = f"{r['ContextString']}\n\n---\n\n{r['Behavior']}" if r["ContextString"] else r["Behavior"]
        kind = refusal_kind(r)
        rows.append({"prompt": prompt, "response": REFUSALS[kind][i % 3], "id": r["BehaviorID"], "category": kind})
    return rows


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


if __name__ == "__main__":
    OUTPUT.write_text(render(build()), encoding="utf-8")
