"""The ``settings`` table: ketch's settings as text, by key (``get``/``set``, image remotes)."""

from __future__ import annotations

from ketch.store.base import Tables


class SettingsTable(Tables):
    """Settings, by key."""

    def get_setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str | None) -> None:
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM settings WHERE key = ?", (key,))
            else:
                db.execute(
                    "INSERT INTO settings (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

    def settings(self, prefix: str = "") -> list[tuple[str, str]]:
        """All settings whose key starts with ``prefix``."""
        rows = self._db.execute(
            "SELECT key, value FROM settings WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        ).fetchall()
        return [(str(k), str(v)) for k, v in rows]
