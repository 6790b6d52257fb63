"""``AuditRelation``: the result of an analytics query, a DuckDB relation with one fix.

DuckDB's own ``.df()`` converts TIMESTAMPTZ columns with ``DataFrame.drop(...,
inplace=True)``, which pandas 3.1 deprecates (a ``Pandas4Warning`` on every report with
a time column). The data frame is built from Arrow instead (``pyarrow`` keeps the
column's UTC time zone); everything else is DuckDB's relation unchanged.
"""

from __future__ import annotations

from typing import Any

import duckdb

__all__ = ["AuditRelation"]


class AuditRelation:
    """A :class:`duckdb.DuckDBPyRelation` whose pandas conversion goes through Arrow.

    Every attribute but ``df`` / ``fetchdf`` / ``to_df`` is the wrapped relation's
    (``.pl()``, ``.arrow()``, ``.fetchall()``, ``.columns``, ...); ``relation`` is the
    wrapped relation itself.
    """

    __slots__ = ("relation",)

    def __init__(self, relation: duckdb.DuckDBPyRelation) -> None:
        self.relation = relation

    def df(self, **options: Any) -> Any:
        """The result as a pandas DataFrame (through Arrow; TIMESTAMPTZ stays UTC-aware).

        Without ``pyarrow`` (or with DuckDB's own ``df`` options such as
        ``date_as_object``) DuckDB converts it.
        """
        try:
            import pyarrow
        except ImportError:
            pyarrow = None
        if pyarrow is None or options:
            return self.relation.df(**options)
        return self.relation.to_arrow_table().to_pandas()

    fetchdf = df
    to_df = df

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """The Arrow C stream of the rows (dunder methods bypass ``__getattr__``)."""
        return self.relation.__arrow_c_stream__(requested_schema)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.relation, name)

    def __len__(self) -> int:
        return len(self.relation)

    def __repr__(self) -> str:
        return repr(self.relation)
