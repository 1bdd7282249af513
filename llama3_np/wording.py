"""Counts in messages, in correct English: "1 token", "2 tokens"."""


def count(n: int, noun: str, plural: str = "") -> str:
    """n and the noun, plural unless n is 1 (plural: for nouns not made with -s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
