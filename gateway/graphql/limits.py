"""Limits that keep one query from taking the server down: its depth, its size in tokens, and its
estimated cost (how many fields it may resolve). Introspection stays on and costs nothing."""
from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (FieldNode, FragmentDefinitionNode, FragmentSpreadNode, GraphQLError, GraphQLList,
                     GraphQLNonNull, GraphQLObjectType, GraphQLSchema, InlineFragmentNode, IntValueNode,
                     OperationDefinitionNode, SelectionSetNode, ValidationContext, ValidationRule, VariableNode)
from strawberry.extensions import (AddValidationRules, MaxTokensLimiter, ParserCache, QueryDepthLimiter,
                                   SchemaExtension, ValidationCache)

from gateway.services.jobs import MAX_PAGE

MAX_DEPTH = 12
MAX_TOKENS = 10_000
MAX_COST = 200_000  # a page of 500 jobs with every field, their tasks and nodes costs about 40,000
LIST_ESTIMATE = 10  # the items a list without page arguments (a job's tasks, a node's jobs) counts for


def _unwrap(graphql_type: Any) -> tuple[Any, bool]:
    """The named type behind NonNull and List wrappers, and whether a list is among them."""
    is_list = False
    while isinstance(graphql_type, (GraphQLNonNull, GraphQLList)):
        is_list = is_list or isinstance(graphql_type, GraphQLList)
        graphql_type = graphql_type.of_type
    return graphql_type, is_list


def _page_size(field: FieldNode, variables: Mapping[str, Any]) -> int:
    """`first` or `last` of a paged field (a variable's value, when given); MAX_PAGE when neither is
    given, or the value is not known yet (an invalid one is refused when the field resolves)."""
    for argument in field.arguments or ():
        if argument.name.value in ("first", "last"):
            value = argument.value
            if isinstance(value, IntValueNode):
                return int(value.value)
            if isinstance(value, VariableNode) and isinstance(variables.get(value.name.value), int):
                return variables[value.name.value]
            return MAX_PAGE
    return MAX_PAGE


class _Cost:
    def __init__(self, schema: GraphQLSchema, fragments: Mapping[str, FragmentDefinitionNode],
                 variables: Mapping[str, Any]):
        self._schema, self._fragments, self._variables = schema, fragments, variables

    def of(self, selections: SelectionSetNode, parent: Any, times: int, in_page: bool,
           fragments_seen: frozenset[str] = frozenset()) -> int:
        """The fields `selections` resolves when their parent is resolved `times` times. Lists
        right inside a paged field (a connection's `edges`) are the page itself."""
        total = 0
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                name = selection.name.value
                fields = getattr(parent, "fields", {})
                if name.startswith("__") or name not in fields:
                    continue  # introspection is free; unknown fields are other rules' errors
                total += times
                if selection.selection_set is None:
                    continue
                child, is_list = _unwrap(fields[name].type)
                page = _page_size(selection, self._variables) if "first" in fields[name].args else None
                factor = page if page is not None else (LIST_ESTIMATE if is_list and not in_page else 1)
                total += self.of(selection.selection_set, child, times * max(factor, 1), page is not None,
                                 fragments_seen)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self._schema.get_type(condition.name.value) if condition else parent
                total += self.of(selection.selection_set, target, times, in_page, fragments_seen)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self._fragments.get(name)
                if fragment is None or name in fragments_seen:  # cycles are another rule's error
                    continue
                target = self._schema.get_type(fragment.type_condition.name.value)
                total += self.of(fragment.selection_set, target, times, in_page, fragments_seen | {name})
        return total


@functools.lru_cache(maxsize=256)
def _cost_rule(int_variables: tuple[tuple[str, int], ...]) -> type[ValidationRule]:
    """The rule for the operation's integer variables (page sizes): one class for each set of
    them, so that validation results are cached per query text and page sizes."""
    variables = dict(int_variables)

    class CostLimit(ValidationRule):
        def __init__(self, context: ValidationContext):
            super().__init__(context)
            document, schema = context.document, context.schema
            fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
            cost = _Cost(schema, fragments, variables)
            for operation in document.definitions:
                if not isinstance(operation, OperationDefinitionNode):
                    continue
                root = schema.get_root_type(operation.operation)
                if not isinstance(root, GraphQLObjectType):
                    continue
                estimate = cost.of(operation.selection_set, root, 1, False)
                if estimate > MAX_COST:
                    context.report_error(GraphQLError(
                        f"The query is too big: it may resolve about {estimate} fields, at most {MAX_COST} are "
                        "allowed (ask for smaller pages or fewer nested fields)",
                        extensions={"code": "QUERY_TOO_COMPLEX"}))
    return CostLimit


class CostLimiter(SchemaExtension):
    """Adds the cost rule for this operation: it needs the operation's variables (page sizes)."""

    def on_operation(self) -> Iterator[None]:
        variables = self.execution_context.variables or {}
        ints = tuple(sorted((k, v) for k, v in variables.items() if isinstance(v, int) and not isinstance(v, bool)))
        self.execution_context.validation_rules = (*self.execution_context.validation_rules, _cost_rule(ints))
        yield


# The depth rule's class, made once: the validation cache knows it again in every operation.
_DEPTH_RULES = QueryDepthLimiter(max_depth=MAX_DEPTH).validation_rules
DOCUMENTS_CACHED = 512  # parsed and validated query texts kept (most recent first)


def limits() -> list:
    """The schema's extensions that enforce these limits (factories: one of each per operation).
    Parsing and validation are cached by query text: a frontend sends the same few queries, and
    validating one took four fifths of a small query's time."""
    return [lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS), lambda: ParserCache(maxsize=DOCUMENTS_CACHED),
            lambda: AddValidationRules(_DEPTH_RULES), CostLimiter, lambda: ValidationCache(maxsize=DOCUMENTS_CACHED)]
