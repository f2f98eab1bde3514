"""Evaluates a tool's filter and transform with a bound on what they may build.

JMESPath cannot be interrupted, and a short expression can build an enormous value:
``[@,@]|[@,@]|...`` doubles its result at every step (shared in memory, but 2**n elements once
serialised, compared or passed to ``to_string``), and ``join('', [@,@])`` doubles a string for
real. So the interpreter here measures every value it builds (multi-selects, projections,
flattens, slices and function results) as it builds it, in approximate JSON bytes, and stops
with :class:`TooLarge` once one exceeds the limit, once all it built adds up to
:data:`BUILD_FACTOR` times the limit, or once the elements it has iterated over exceed
:data:`MAX_STEPS`: so both its memory and its time are bounded. Values it only selects from
the document are parts of the body, bounded by its size. Since no value any step reads can
exceed the limit, no single step (a comparison, ``to_string``, ``sort``) can cost more than the
limit either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import jmespath.parser
import jmespath.visitor
import orjson

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode  # the stubs' AST node type

MIN_LIMIT: Final = 1 << 20
"""Approximate JSON bytes any value may reach, at least (small bodies)."""
LIMIT_FACTOR: Final = 4
"""... and for larger bodies, this many times the body's size."""
BUILD_FACTOR: Final = 16
"""All the values one evaluation builds may add up to this many times the limit."""
MAX_STEPS: Final = 2_000_000
"""Elements projections and flattens may iterate over in one evaluation (bounds its time)."""

_SCALAR: Final = 8  # numbers, true, false, null: a few bytes each once serialised


class TooLarge(Exception):
    """The expression built a value past the limit, or took too many steps."""


def limit_for(body_size: int) -> int:
    """The bound for an event whose body is ``body_size`` bytes."""
    return max(MIN_LIMIT, LIMIT_FACTOR * body_size)


def search(parsed: jmespath.parser.ParsedResult, document: Any, limit: int) -> Any:
    """``parsed.search(document)``, raising :class:`TooLarge` instead of building a value of
    more than ``limit`` approximate JSON bytes (or iterating for too long)."""
    return _BoundedInterpreter(limit).visit(parsed.parsed, document)


class _BoundedInterpreter(jmespath.visitor.TreeInterpreter):
    """The standard interpreter, with the nodes that build values measured as they do."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self._steps = 0
        self._built = 0
        self._budget = BUILD_FACTOR * limit
        # Sizes by id, keeping each value alive so that its id is not reused meanwhile.
        self._sizes: dict[int, tuple[Any, int]] = {}

    def visit_multi_select_list(self, node: _TreeNode, value: Any) -> Any:
        return self._checked(super().visit_multi_select_list(node, value))

    def visit_multi_select_dict(self, node: _TreeNode, value: Any) -> Any:
        return self._checked(super().visit_multi_select_dict(node, value))

    def visit_function_expression(self, node: _TreeNode, value: Any) -> Any:
        return self._checked(super().visit_function_expression(node, value))

    def visit_slice(self, node: _TreeNode, value: Any) -> Any:
        return self._checked(super().visit_slice(node, value))

    def visit_flatten(self, node: _TreeNode, value: Any) -> Any:
        base = self.visit(node["children"][0], value)
        if not isinstance(base, list):
            return None
        merged: list[Any] = []
        total = 2
        for element in base:
            if isinstance(element, list):
                self._step(len(element))
                total += self._size(element) - 1  # its items, without its brackets
                merged.extend(element)
            else:
                self._step(1)
                total += self._size(element) + 1
                merged.append(element)
            if total > self._limit:
                raise TooLarge
        return self._known(merged, total)

    def visit_projection(self, node: _TreeNode, value: Any) -> Any:
        base = self.visit(node["children"][0], value)
        if not isinstance(base, list):
            return None
        return self._project(node["children"][1], base, None)

    def visit_value_projection(self, node: _TreeNode, value: Any) -> Any:
        base = self.visit(node["children"][0], value)
        if not isinstance(base, dict):
            return None
        return self._project(node["children"][1], base.values(), None)

    def visit_filter_projection(self, node: _TreeNode, value: Any) -> Any:
        base = self.visit(node["children"][0], value)
        if not isinstance(base, list):
            return None
        return self._project(node["children"][1], base, node["children"][2])

    def _project(self, right: _TreeNode, base: Any, condition: _TreeNode | None) -> Any:
        """A projection's list, measured element by element as it grows."""
        collected: list[Any] = []
        total = 2
        for element in base:
            self._step(1)
            if condition is not None and _false(self.visit(condition, element)):
                continue
            current = self.visit(right, element)
            if current is not None:
                total += self._size(current) + 1
                if total > self._limit:
                    raise TooLarge
                collected.append(current)
        return self._known(collected, total)

    def _step(self, count: int) -> None:
        self._steps += count
        if self._steps > MAX_STEPS:
            raise TooLarge

    def _size(self, value: Any) -> int:
        """``value``'s approximate JSON size, counting a shared part once per reference (as
        serialising it would)."""
        if isinstance(value, str):
            return len(value) + 2
        if not isinstance(value, list | dict):
            return _SCALAR
        known = self._sizes.get(id(value))
        if known is not None:
            return known[1]
        # Not built by this evaluation (every value it builds is measured as it is built), so
        # a part of the document or a literal: never shared, serialised at C speed.
        size = len(orjson.dumps(value, default=repr))
        self._sizes[id(value)] = (value, size)
        return size

    def _known(self, built: list[Any], size: int) -> list[Any]:
        self._sizes[id(built)] = (built, size)
        self._spend(size)
        return built

    def _spend(self, size: int) -> None:
        """Count what was built: many values each under the limit may not add up past
        :data:`BUILD_FACTOR` times it (bounds the time spent building them)."""
        self._built += size
        if self._built > self._budget:
            raise TooLarge

    def _checked(self, value: Any) -> Any:
        """``value``, a value just built, once measured: from its parts' known sizes."""
        if not isinstance(value, list | dict) or id(value) in self._sizes:
            size = self._size(value)
            if size > self._limit:
                raise TooLarge
            self._spend(size)
            return value
        if isinstance(value, dict):
            total = 2 + sum(len(key) + 4 + self._size(item) for key, item in value.items())
        else:
            total = 2 + sum(self._size(item) + 1 for item in value)
        if total > self._limit:
            raise TooLarge
        self._sizes[id(value)] = (value, total)
        self._spend(total)
        return value


def _false(value: Any) -> bool:
    """JMESPath falsehood (as the standard interpreter's filter projections use it)."""
    return value is None or value is False or value in ("", [], {})
