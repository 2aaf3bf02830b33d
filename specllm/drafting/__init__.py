"""Drafting: where proposed tokens come from (suffix index over the text and over earlier outputs)."""
