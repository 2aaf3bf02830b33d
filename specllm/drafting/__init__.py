"""Drafting: where proposed tokens come from, and what decides whether a model can draft.

    base.py        Draft, the Drafter protocol, ModelDrafter, NgramDrafter, NoDrafter
    compat.py      can a draft's token ids be verified by the target (the vocabulary check)
    crossvocab.py  a draft of another vocabulary, drafting through text
    suffix.py      the suffix index over the text so far (and over earlier outputs)
    memory.py      earlier outputs kept for lookup drafting
"""
