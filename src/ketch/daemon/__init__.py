"""ketchd: the asyncio daemon serving the REST/JSON API on a Unix socket."""
