"""tinyproj: a synthetic sample project."""

__all__ = [
    "mathops",
    "numbers",
    "convert",
    "strings",
    "text",
    "casing",
    "lists",
    "mappings",
    "shapes",
    "accounts",
    "stats",
    "filters",
]
