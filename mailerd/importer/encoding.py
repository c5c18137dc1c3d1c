"""COPY encoding: parsed rows to ``account_id, email, attributes`` rows of COPY text input.

The attributes are written as JSON text here, on the parser thread's core, so that Postgres has
no per-row work beyond reading the jsonb.
"""

from __future__ import annotations

import orjson

from mailerd.importer.parsing import ColumnType, Header


def copy_text(document: str) -> str:
    """JSON text as a COPY text-format field (the one character to escape is the backslash:
    JSON text has no raw tab, newline or other control character)."""
    return document.replace("\\", "\\\\") if "\\" in document else document


def lead_address(address: str, lower_ascii: bool) -> str:
    """The address as stored. Every lookup (the unique index included) matches
    ``lower(email)``, so the stored spelling is cosmetic; Python lower-cases only what it
    lower-cases exactly as the database does: ASCII addresses, when ``lower_ascii`` (see
    :func:`mailerd.db.leads.lowers_ascii_like_python`). Other addresses are stored as written."""
    return address.lower() if lower_ascii and address.isascii() else address


class RowEncoder:
    """CSV fields to a COPY text row ``account_id, email, attributes`` (attributes as JSON text).

    Values are numbers written verbatim, ``true`` / ``false``, or strings. :meth:`verbatim` is
    the fast path for rows whose values need no escaping (checked per chunk); :meth:`escaped`
    takes any row.
    """

    def __init__(self, header: Header, account_id: int, *, lower_ascii: bool) -> None:
        self.header = header
        self.prefix = f"{int(account_id)}\t"
        self.lower_ascii = lower_ascii
        # In jsonb's own key order (shorter first, then by bytes): Postgres then finds them sorted.
        order = sorted(header.attribute_indexes, key=lambda i: _jsonb_key_order(header.names[i]))
        self.keys = {i: orjson.dumps(header.names[i]).decode() for i in order}
        self.templates: dict[tuple[tuple[tuple[int, ColumnType], ...], tuple[int, ...]], str] = {}

    def template(self, types: dict[int, ColumnType], empty: tuple[int, ...]) -> str:
        """A ``str.format`` template for rows with these types and these empty fields."""
        key = (tuple(sorted(types.items())), empty)
        found = self.templates.get(key)
        if found is not None:
            return found
        members: list[str] = []
        for index, name in self.keys.items():
            kind = types.get(index)
            if kind is None or index in empty:  # no value: the attribute is absent
                continue
            slot = "{" + str(index) + "}"
            value = f'"{slot}"' if kind is ColumnType.STRING else slot
            members.append(_format_literal(copy_text(name)) + ":" + value)
        email = "{" + str(self.header.email_index) + "}"
        template = f"{_format_literal(self.prefix)}{email}\t{{{{{','.join(members)}}}}}\n"
        if len(self.templates) > 1024:  # a file with very many combinations of empty fields
            self.templates.clear()
        self.templates[key] = template
        return template

    def verbatim(self, rows: list[list[str]], types: dict[int, ColumnType]) -> list[str]:
        """Rows whose values hold no ``"``, backslash or control character, emails trimmed and
        valid, boolean values lower-case."""
        email_index, lower_ascii = self.header.email_index, self.lower_ascii
        full = self.template(types, ())
        lines: list[str] = []
        append = lines.append
        for fields in rows:
            email = fields[email_index]
            if lower_ascii and email.isascii():
                fields[email_index] = email.lower()
            if "" in fields:
                empty = tuple(i for i, value in enumerate(fields) if not value)
                append(self.template(types, empty).format(*fields))
            else:
                append(full.format(*fields))
        return lines

    def escaped(self, rows: list[list[str]], types: dict[int, ColumnType]) -> list[str]:
        """Any rows (quoted fields with quotes, backslashes, new lines...), emails trimmed and
        valid: each string value goes through the JSON encoder."""
        email_index = self.header.email_index
        lines: list[str] = []
        for fields in rows:
            members: list[str] = []
            for index, name in self.keys.items():
                value = fields[index]
                if not value:
                    continue
                kind = types.get(index, ColumnType.STRING)
                if kind is ColumnType.STRING:
                    value = orjson.dumps(value).decode()
                elif kind is ColumnType.BOOLEAN:
                    value = value.lower()
                members.append(f"{name}:{value}")
            document = copy_text("{" + ",".join(members) + "}")
            address = lead_address(fields[email_index], self.lower_ascii)
            lines.append(f"{self.prefix}{address}\t{document}\n")
        return lines


def _jsonb_key_order(name: str) -> tuple[int, bytes]:
    encoded = name.encode("utf-8", "surrogateescape")
    return len(encoded), encoded


def _format_literal(text: str) -> str:
    """``text`` as literal text inside a ``str.format`` template."""
    return text.replace("{", "{{").replace("}", "}}")
