"""The key of a cached page: whose view of the registry, and which page of it."""

from __future__ import annotations

from dataclasses import dataclass

# The `name` part of a stored key (the pages.key column), for SQL that selects by name.
NAME_SQL = "substr(key, instr(key, ':') + 1)"


@dataclass(frozen=True, slots=True)
class PageKey:
    """A page in memory and in SQLite: the scope key (or one credential's own view of a group)
    and the normalized project name, '' for the index."""

    view: str
    name: str = ""

    @property
    def is_index(self) -> bool:
        return self.name == ""

    def encode(self) -> str:
        """The stored form, `view:name`; views hold no ':', names never do."""
        return f"{self.view}:{self.name}"

    @classmethod
    def decode(cls, text: str) -> PageKey:
        view, _, name = text.partition(":")
        return cls(view, name)

    @staticmethod
    def view_prefix(view: str) -> str:
        """The start every stored key of `view` shares."""
        return f"{view}:"
