"""RESULTS.md: one section per benchmark script, each replaced when its script runs again."""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
_HEADER = ("# Benchmark results\n\nWritten by the scripts in benchmarks/ (see README.md); "
           "each replaces only its own section.\n")


def markdown_table(headers: list, rows: list) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_markdown(description: dict) -> str:
    return "\n".join(f"- {label}: {value}" for label, value in description.items())


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    """Put `markdown` between this script's markers in RESULTS.md, replacing what a
    previous run left there and keeping the other scripts' sections."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else _HEADER
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
