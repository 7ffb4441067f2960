"""A name -> object registry that refuses duplicates, for variants (architectures, stages...)."""

from collections.abc import Callable, Iterator
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self._unknown(name)) from None

    def name_type(self) -> type[str]:
        """A config field's type for a name of this registry: validated against it, so a registry's names
        are declared once, where each item registers."""
        return Annotated[str, AfterValidator(self.check)]

    def check(self, name: str) -> str:
        """``name`` if it is registered, else a ValueError naming the known ones."""
        if name not in self._items:
            raise ValueError(self._unknown(name))
        return name

    def _unknown(self, name: str) -> str:
        return f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items)) or 'none'}"

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
