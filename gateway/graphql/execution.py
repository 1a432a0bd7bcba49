"""A faster executor for what most of a big answer is: plain fields. graphql-core resolves every
field of every object through the same general machinery (resolve info, resolver, completion,
awaitable checks): 4 to 20 µs a field, so a page of 500 jobs took several times as long as /v1
answering the same.

A field is plain when it is an attribute of its object, or a method computing it from the object
alone (synchronous, without info or arguments: it may be called again when it fails), with no
permission or extension, and its type is a scalar or enum, a non-null object, or a non-null list
of non-null objects or scalars. A selection whose fields are all plain, down to its leaves, is
answered by one reader function; others go field by field, plain ones read directly. A value that
is not plainly valid (a null where the schema says non-null, one that does not serialise, a method
that failed) makes that object go the general way, so answers and errors are what graphql-core
gives. Skipping a plain field's own error boundary changes nothing: it is non-null, or a leaf
that has no fields below it, so an error passes to its parent either way."""
from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

from graphql import (GraphQLList, GraphQLNonNull, GraphQLObjectType, Undefined, is_enum_type, is_leaf_type,
                     is_object_type)
from graphql.pyutils import Path, gather_with_cancel
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter


class _NotPlain(Exception):
    """A value that cannot be answered plainly: its object goes the general way."""


class _Plain(NamedTuple):
    read: Callable[[Any], Any]  # the value from its object
    non_null: bool
    convert: Callable[[Any], Any] | None  # a leaf's (or leaves' list's items') output value
    object_type: GraphQLObjectType | None  # a non-null object's, or a list's objects' type
    is_list: bool


class _Selection(NamedTuple):
    fields: list[tuple[str, Any, _Plain | None]]  # response name, field nodes, how it is read (None: the general way)
    read_all: Callable[[Any], dict[str, Any]] | None  # the whole selection at once, when it is plain throughout


_INT32 = range(-(2**31), 2**31)
# Values that are their own output, by scalar: checked by type alone (and range, and finiteness).
_AS_IS: dict[str, Callable[[Any], bool]] = {
    "String": lambda value: type(value) is str,
    "ID": lambda value: type(value) is str,
    "Boolean": lambda value: type(value) is bool,
    "Int": lambda value: type(value) is int and value in _INT32,
    "Float": lambda value: type(value) is float and math.isfinite(value),
}


def _converter(leaf_type: Any) -> Callable[[Any], Any]:
    """The output value of a scalar or enum value: the common cases directly, the others as
    graphql-core does; _NotPlain when it cannot be serialised."""
    as_is = _AS_IS.get(leaf_type.name)
    names = {value.value: name for name, value in leaf_type.values.items()} if is_enum_type(leaf_type) else {}

    def convert(value: Any) -> Any:
        if as_is is not None and as_is(value):
            return value
        try:
            return names[value]
        except (KeyError, TypeError):
            pass
        try:
            coerced = leaf_type.coerce_output_value(value)
        except Exception:  # noqa: BLE001 - the general way reports it as a field error
            raise _NotPlain from None
        if coerced is None or coerced is Undefined:
            raise _NotPlain
        return coerced
    return convert


def _plain_fields(parent_type: GraphQLObjectType) -> dict[str, _Plain]:
    plain = {}
    for name, field in parent_type.fields.items():
        definition = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
        if definition is None or definition.extensions or definition.default_resolver is not getattr:
            continue
        resolver = definition.base_resolver
        if resolver is not None and (resolver.is_async or resolver.arguments or resolver.info_parameter
                                     or resolver.root_parameter or not resolver.self_parameter):
            continue
        read = resolver.wrapped_func if resolver else operator.attrgetter(definition.python_name)
        non_null = isinstance(field.type, GraphQLNonNull)
        inner = field.type.of_type if non_null else field.type
        if is_leaf_type(inner):
            plain[name] = _Plain(read, non_null, _converter(inner), None, False)
        elif non_null and is_object_type(inner) and inner.is_type_of is None:
            plain[name] = _Plain(read, True, None, inner, False)
        elif non_null and isinstance(inner, GraphQLList) and isinstance(inner.of_type, GraphQLNonNull):
            item = inner.of_type.of_type
            if is_leaf_type(item):
                plain[name] = _Plain(read, True, _converter(item), None, True)
            elif is_object_type(item) and item.is_type_of is None:
                plain[name] = _Plain(read, True, None, item, True)
    return plain


class FastExecutionContext(StrawberryGraphQLCoreExecutionContext):
    _plain_of: dict[str, dict[str, _Plain]] = {}  # by type name; the schema is built once

    def execute_fields(self, parent_type: GraphQLObjectType, source_value: Any, path: Path | None,
                       grouped_field_set: Any, position_context: Any) -> Any:
        if self.middleware_manager is not None and self.middleware_manager.middlewares:
            # extensions that wrap every resolver: none may be skipped
            return super().execute_fields(parent_type, source_value, path, grouped_field_set, position_context)
        selection = self._selection(parent_type, grouped_field_set)
        if selection.read_all is not None:
            try:
                return selection.read_all(source_value)
            except _NotPlain:
                pass  # field by field: the general way answers what could not be read plainly
        results: dict[str, Any] = {}
        awaitable: list[str] = []
        for response_name, details, plain in selection.fields:
            field_path = Path(path, response_name, parent_type.name)
            result = Undefined
            if plain is not None:
                try:
                    result = self._plain_value(plain, _read(plain, source_value), details, field_path,
                                               position_context)
                except _NotPlain:
                    result = Undefined
            if result is Undefined:
                result = self.execute_field(parent_type, source_value, details, field_path, position_context)
                if result is Undefined:
                    continue
            results[response_name] = result
            if self.is_awaitable(result):
                awaitable.append(response_name)
        if not awaitable:
            return results
        return self._gather(results, awaitable)

    def _plain_value(self, plain: _Plain, value: Any, details: Any, path: Path, position_context: Any) -> Any:
        """A plain field's answer; _NotPlain when it must go the general way."""
        if value is None:
            if plain.non_null:
                raise _NotPlain
            return None
        if not plain.is_list:
            if plain.convert is not None:
                return plain.convert(value)
            return self._object(plain.object_type, value, details, path, position_context)
        if not isinstance(value, (list, tuple)) or any(item is None for item in value):
            raise _NotPlain
        if plain.convert is not None:
            return [plain.convert(item) for item in value]
        items = [self._object(plain.object_type, item, details, Path(path, index, None), position_context)
                 for index, item in enumerate(value)]
        waiting = [index for index, item in enumerate(items) if self.is_awaitable(item)]
        return self._gather_list(items, waiting) if waiting else items

    def _object(self, object_type: GraphQLObjectType, value: Any, details: Any, path: Path,
                position_context: Any) -> Any:
        grouped, new_defer_usages, _forbidden = self.collect_subfields(object_type, details)
        if new_defer_usages:
            raise _NotPlain
        return self.execute_fields(object_type, value, path, grouped, position_context)

    def _selection(self, parent_type: GraphQLObjectType, grouped_field_set: Any) -> _Selection:
        """How a selection of a type is read; made once per selection (graphql-core hands the same
        grouped field set for every item of a list)."""
        selections = self.__dict__.setdefault("_selections", {})
        key = (parent_type.name, id(grouped_field_set))
        cached = selections.get(key)
        if cached is not None:
            return cached[1]
        plain_fields = self._plain_of.get(parent_type.name)
        if plain_fields is None:
            plain_fields = self._plain_of[parent_type.name] = _plain_fields(parent_type)
        fields = [(name, details, plain_fields.get(details[0].node.name.value))
                  for name, details in grouped_field_set.items()]
        selection = _Selection(fields, self._reader(fields))
        selections[key] = (grouped_field_set, selection)  # holding the set keeps its id from being reused
        return selection

    def _reader(self, fields: list[tuple[str, Any, _Plain | None]]) -> Callable[[Any], dict[str, Any]] | None:
        """One function answering the whole selection, when every field in it and in its
        sub-selections is plain; it raises _NotPlain at the first value that is not."""
        steps = []
        for name, details, plain in fields:
            if plain is None:
                return None
            convert = plain.convert
            if convert is None:
                grouped, new_defer_usages, _forbidden = self.collect_subfields(plain.object_type, details)
                convert = None if new_defer_usages else self._selection(plain.object_type, grouped).read_all
                if convert is None:
                    return None
            steps.append((name, plain.read, plain.non_null, plain.is_list, convert))

        def read_all(source: Any) -> dict[str, Any]:
            answer = {}
            try:
                for name, read, non_null, is_list, convert in steps:
                    value = read(source)
                    if value is None:
                        if non_null:
                            raise _NotPlain
                        answer[name] = None
                    elif not is_list:
                        answer[name] = convert(value)
                    elif isinstance(value, (list, tuple)):
                        answer[name] = [convert(item) if item is not None else _not_plain() for item in value]
                    else:
                        raise _NotPlain
            except _NotPlain:
                raise
            except Exception:  # noqa: BLE001 - a method that failed: the general way reports it
                raise _NotPlain from None
            return answer
        return read_all

    @staticmethod
    async def _gather(results: dict[str, Any], awaitable: list[str]) -> dict[str, Any]:
        """As graphql-core does: the object's async fields run together (their loaders batch)."""
        if len(awaitable) == 1:
            results[awaitable[0]] = await results[awaitable[0]]
        else:
            results.update(zip(awaitable, await gather_with_cancel(*(results[name] for name in awaitable)),
                               strict=True))
        return results

    @staticmethod
    async def _gather_list(items: list[Any], waiting: list[int]) -> list[Any]:
        for index, value in zip(waiting, await gather_with_cancel(*(items[i] for i in waiting)), strict=True):
            items[index] = value
        return items


def _read(plain: _Plain, source: Any) -> Any:
    try:
        return plain.read(source)
    except Exception:  # noqa: BLE001 - a method that failed: the general way calls it again and reports it
        raise _NotPlain from None


def _not_plain() -> Any:
    raise _NotPlain
