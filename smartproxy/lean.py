"""A small stand-in for the ``collections.deque`` aiohttp keeps per connection and per request.

An empty deque holds a 64-slot block: ~760 bytes. aiohttp keeps one per client connection (its
queue of parsed requests, ``RequestHandler._messages``) and one per request body
(``StreamReader._buffer``), for as long as the request is in flight. Both hold zero to a few
items: a list does that in ~60 bytes, and taking the first of a few items costs no more than a
deque's ``popleft``. With 10,000 requests in flight that is ~14 MB (issue [8]).
"""

from __future__ import annotations

from collections import deque
from typing import Any


class SmallQueue(list[Any]):
    """The part of ``deque``'s interface aiohttp uses on these two, on a list."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


def shrink(owner: object, name: str) -> None:
    """Replace ``owner.<name>``, if it is an empty deque, with an empty ``SmallQueue``: a
    no-op should aiohttp's attribute be missing or be something else."""
    current = getattr(owner, name, None)
    if type(current) is deque and not current:
        setattr(owner, name, SmallQueue())
