"""JSON Schemas from clients, checked and validated without reaching out or running long.

``jsonschema`` as it comes fetches remote ``$ref`` targets (http, https, file) with urlopen, runs
``pattern`` with Python's backtracking ``re``, checks ``format`` (compiling client regexes) in
``check_schema``, and compares ``uniqueItems`` pairwise. Here:

- references resolve within the document only: validators get a :class:`referencing.Registry`
  whose retrieval refuses, and :func:`check_schema` walks the schema so that a ``$ref`` /
  ``$dynamicRef`` / ``$recursiveRef`` that does not resolve locally is a 400 naming it;
- the schema's size, depth, and size with every ``$ref`` expanded are capped, and a reference
  cycle that does not descend into the value (endless recursion) is refused;
- ``pattern``, ``patternProperties`` (and ``additionalProperties``, which reads them) run with
  RE2 (decoding/refinement/patterns.py); ``unevaluatedProperties`` next to
  ``patternProperties`` is refused, as jsonschema would run those patterns with ``re``;
- ``uniqueItems`` hashes the items (linear), ``format`` is not asserted, and every keyword
  checks the deadline of :func:`decoding.refinement.patterns.run_bounded`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema.exceptions import ValidationError

from ..params import NestedFieldError
from .patterns import check_deadline, compile_pattern

#: Deepest nesting of the schema document (objects and arrays).
MAX_DEPTH = 32
#: Most JSON values in the schema document.
MAX_VALUES = 5000
#: Most subschemas visited when every ``$ref`` is expanded where it is used.
MAX_EXPANDED = 10000
#: Longest chain of ``$ref`` followed through other ``$ref`` targets.
MAX_REF_CHAIN = 32
#: Validation errors read from one candidate (the report shows five).
MAX_ERRORS = 100

REF_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
#: Keywords whose subschemas apply to a part of the value (a member or an item), so a
#: reference cycle through them ends with the value.
_DESCENDING = frozenset(
    {
        "properties",
        "patternProperties",
        "additionalProperties",
        "unevaluatedProperties",
        "propertyNames",
        "items",
        "prefixItems",
        "additionalItems",
        "unevaluatedItems",
        "contains",
    }
)

Path = tuple[str | int, ...]


def _refuse(uri: str) -> referencing.Resource[Any]:
    raise referencing.exceptions.NoSuchResource(ref=uri)


#: References resolve inside the document; nothing is ever fetched.
LOCAL_ONLY = referencing.Registry(retrieve=_refuse)


def check_schema(schema: Any) -> None:
    """Refuse a schema this server will not validate with. Raises :class:`NestedFieldError`
    whose path points into the schema."""
    _check_shape(schema)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema, format_checker=None)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise ValueError(f"not a valid JSON Schema at {where}: {exc.message}") from None
    if not isinstance(schema, dict):
        return
    spec = _specification(cls)
    root = spec.create_resource(schema)
    _Walk(spec).run(root, LOCAL_ONLY.resolver_with_root(root))


def build_validator(schema: Any) -> jsonschema.protocols.Validator:
    """A validator for a schema :func:`check_schema` accepted."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return _safe_class(cls)(schema, registry=LOCAL_ONLY)


def validation_errors(validator: Any, value: Any) -> tuple[list[ValidationError], int]:
    """Up to five errors (by path) and how many were read (at most :data:`MAX_ERRORS`)."""
    errors = list(itertools.islice(validator.iter_errors(value), MAX_ERRORS))
    errors.sort(key=lambda e: [str(p) for p in e.path])
    return errors[:5], len(errors)


# -- the checks --------------------------------------------------------------------------------


def _check_shape(schema: Any) -> None:
    """Depth and size, iteratively (a deep schema must not recurse here or in jsonschema)."""
    count = 0
    stack: list[tuple[Any, Path]] = [(schema, ())]
    while stack:
        value, path = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise NestedFieldError(f"the schema has more than {MAX_VALUES} values")
        if len(path) > MAX_DEPTH:
            raise NestedFieldError(f"the schema nests deeper than {MAX_DEPTH} levels", path)
        if isinstance(value, dict):
            stack.extend((v, (*path, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(value))


def _specification(cls: Any) -> referencing.Specification[Any]:
    return referencing.jsonschema.specification_with(
        cls.ID_OF(cls.META_SCHEMA), default=referencing.jsonschema.DRAFT202012
    )


class _Walk:
    """One pass over the schema following its references: every reference resolves locally,
    every pattern compiles with RE2, and the expanded schema stays small."""

    def __init__(self, specification: referencing.Specification[Any]) -> None:
        self.specification = specification
        self.visited = 0
        self.pattern_properties = False
        self.unevaluated: Path | None = None

    def run(self, root: referencing.Resource[Any], resolver: referencing.Resolver[Any]) -> None:
        self._visit(root, resolver, (), [])
        if self.pattern_properties and self.unevaluated is not None:
            raise NestedFieldError(
                "unevaluatedProperties cannot be combined with patternProperties on this "
                "server (it would run the patterns with a backtracking engine)",
                self.unevaluated,
            )

    def _visit(
        self,
        resource: referencing.Resource[Any],
        resolver: referencing.Resolver[Any],
        path: Path,
        chain: list[tuple[int, Path]],
    ) -> None:
        contents = resource.contents
        if not isinstance(contents, dict):
            return
        self.visited += 1
        if self.visited > MAX_EXPANDED:
            raise NestedFieldError(
                f"the schema expands to more than {MAX_EXPANDED} subschemas through its references"
            )
        resolver = resolver.in_subresource(resource)
        expanding = bool(chain)  # inside a reference's target: already checked in place
        if not expanding:
            self._check_keywords(contents, path)
        for key in REF_KEYWORDS:
            ref = contents.get(key)
            if not isinstance(ref, str):
                continue
            try:
                target = resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                raise NestedFieldError(
                    f"{ref!r} does not resolve within the schema; this server resolves "
                    "references locally only (no URLs, no files)",
                    (*path, key),
                ) from None
            self._follow(target, (*path, key), chain)
        for sub, where in _subresources(resource):
            self._visit(sub, resolver, (*path, *where), chain)

    def _follow(
        self,
        target: Any,
        path: Path,
        chain: list[tuple[int, Path]],
    ) -> None:
        ident = id(target.contents)
        for seen, at in chain:
            if seen == ident:
                between = path[len(at) :]
                if not any(key in _DESCENDING for key in between):
                    raise NestedFieldError(
                        "the reference refers back to itself without descending into the "
                        "value (it would recurse forever)",
                        path,
                    )
                return  # recursion through the value: it ends with the value
        if len(chain) >= MAX_REF_CHAIN:
            raise NestedFieldError(f"references nest deeper than {MAX_REF_CHAIN}", path)
        if not isinstance(target.contents, dict):
            return
        sub = referencing.Resource.from_contents(
            target.contents, default_specification=self.specification
        )
        self._visit(sub, target.resolver, path, [*chain, (ident, path)])

    def _check_keywords(self, contents: dict[str, Any], path: Path) -> None:
        pattern = contents.get("pattern")
        if isinstance(pattern, str):
            _compile(pattern, (*path, "pattern"))
        properties = contents.get("patternProperties")
        if isinstance(properties, dict):
            self.pattern_properties = True
            for key in properties:
                _compile(key, (*path, "patternProperties", key))
        if "unevaluatedProperties" in contents and self.unevaluated is None:
            self.unevaluated = (*path, "unevaluatedProperties")


def _compile(pattern: str, path: Path) -> None:
    try:
        compile_pattern(pattern)
    except ValueError as exc:
        raise NestedFieldError(str(exc), path) from None


def _subresources(
    resource: referencing.Resource[Any],
) -> Iterator[tuple[referencing.Resource[Any], Path]]:
    """The resource's subschemas with where they sit (two levels at most below it)."""
    contents = resource.contents
    where: dict[int, Path] = {}
    for key, value in contents.items():
        where[id(value)] = (key,)
        if isinstance(value, dict):
            for inner, item in value.items():
                where.setdefault(id(item), (key, inner))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                where.setdefault(id(item), (key, i))
    for sub in resource.subresources():
        if isinstance(sub.contents, dict):
            yield sub, where.get(id(sub.contents), ())


# -- the keywords that run client patterns, and the deadline -----------------------------------


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not compile_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, properties: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in properties.items():
        regexp = compile_pattern(pattern)
        for key, value in instance.items():
            if regexp.search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = [compile_pattern(p) for p in schema.get("patternProperties", {})]
    return [
        key
        for key in instance
        if key not in properties and not any(p.search(key) for p in patterns)
    ]


def _additional_properties(
    validator: Any, allowed: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional(instance, schema)
    if validator.is_type(allowed, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], allowed, path=extra)
    elif not allowed and extras:
        listed = ", ".join(repr(each) for each in sorted(extras))
        yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


def _unique_items(validator: Any, unique: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Any] = set()
    for item in instance:
        key = _identity(item)
        if key in seen:
            yield ValidationError(f"the array has non-unique elements ({item!r:.80})")
            return
        seen.add(key)


def _identity(value: Any) -> Any:
    """A hashable key equal for values JSON Schema calls equal (1 == 1.0, True != 1)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("l", tuple(_identity(v) for v in value))
    if isinstance(value, dict):
        return ("d", frozenset((k, _identity(v)) for k, v in value.items()))
    return ("z", None)


_KEYWORDS: dict[str, Callable[..., Iterator[Any]]] = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}


def _timed(keyword: Callable[..., Any]) -> Callable[..., Iterator[Any]]:
    @functools.wraps(keyword)
    def checked(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[Any]:
        check_deadline()
        yield from keyword(validator, value, instance, schema) or ()

    return checked


@functools.cache
def _safe_class(cls: Any) -> Any:
    keywords = {
        name: _timed(_KEYWORDS.get(name, keyword)) for name, keyword in cls.VALIDATORS.items()
    }
    return jsonschema.validators.extend(cls, validators=keywords)
