"""The Jinja2 sandbox with a budget: what one render of tenant content may cost.

Pure: Jinja2 only. Jinja's sandbox keeps templates away from Python's internals, but not from
the CPU or the memory: ``{% for i in range(5000) %}{% for j in range(5000) %}`` or
``{{ 'x' * 10**9 }}`` would stall the event loop. :class:`BudgetedEnvironment` bounds, per
render of one recipient (see :class:`mailerd.config.ContentConfig` for the settings):

- loop iterations (``max_loop_iterations``, the three parts together): every item of every
  ``for`` (nested and recursive loops included), every item a filter walks (``join``, ``sort``,
  ``map``..., and every nested item ``tojson`` and ``pprint`` write), and ``range()`` refuses
  more numbers than the iterations left (or than the sandbox's own ``MAX_RANGE``);
- sizes (``max_output_bytes``): no string, list or mapping an operator (``*``, ``+``, ``%``,
  ``~``), a filter or a method call builds may hold more than ``max_output_bytes`` characters
  or items, checked *before* the big ones are built (``'x' * 10**9``, ``'x'|center(10**9)``,
  ``'%999999999s'|format(1)``, ``'{0:{1}}'.format('x', '999999999')``...); the text Python
  would build of a value in one call, where no hook runs (a list printed, stringified, dumped,
  joined or formatted: ``{{ [[[1] * 100] * 100] * 100 }}``), is measured by walking the value
  first (:class:`_Sizer`); integers stay under :data:`MAX_INT_BITS`; each part's output
  is streamed (``generate()``) and stopped past ``max_output_bytes`` bytes of UTF-8; the text a
  part produces in all, captured by ``set`` blocks, macros and ``call`` blocks included, stops
  at :data:`mailerd.meter.PRODUCED_FACTOR` times that;
- time (``max_render_ms``): the CPU time of the render (:func:`mailerd.meter.cpu_clock`),
  looked at from every hook above.

The hooks are the ones Jinja documents for this: ``intercepted_binops``/``call_binop``,
``call``, the filters and globals of the environment, ``finalize``, and the sandbox's
``MAX_RANGE``; loops and ``~`` are rewritten in the parsed template to pass through a filter.
A render measures itself with a :class:`mailerd.meter.Meter` held in a context variable (so
renders in threads and on the loop do not share one); past a limit a hook raises
:class:`mailerd.meter.Overrun`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import jinja2
from jinja2 import nodes
from jinja2.runtime import LoopContext, markup_join, str_join
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum, pass_context
from jinja2.visitor import NodeTransformer

from mailerd.meter import METER, Meter, Overrun, current

MAX_INT_BITS: Final = 14_000  # about 4200 digits: Python converts no more than 4300 to text
TOJSON_MAX_INDENT: Final = 16
LOOP_FILTER: Final = "mailerd_loop"
CONCAT_FILTER: Final = "mailerd_concat"
# Filters that walk their whole input, item by item: each item counts as a loop iteration.
_WALKING: Final = frozenset(
    {"batch", "dictsort", "groupby", "join", "list", "map", "max", "min", "reject"}
    | {"rejectattr", "reverse", "select", "selectattr", "slice", "sort", "sum", "unique"}
    | {"items", "xmlattr"}
)
# Filters that make text of their whole value (str(), escape(), Markup()): measured first.
_STRINGIFYING: Final = frozenset(
    {"capitalize", "center", "e", "escape", "forceescape", "lower", "safe", "string", "striptags"}
    | {"title", "trim", "upper", "urlencode", "wordcount", "xmlattr"}
)
_VIEWS: Final[tuple[type[Any], ...]] = (type({}.keys()), type({}.values()), type({}.items()))
_MEASURED: Final = (str, bytes, list, tuple, dict, set, frozenset)
_NUMBERS: Final = frozenset({int, float})
_PRINTF: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")
_DIGITS: Final = re.compile(r"\d+")
_FIELD_FIRST: Final = re.compile(r"[^.\[]*")


def render_part(template: jinja2.Template, context: Mapping[str, Any], meter: Meter) -> str:
    """Stream one part, stopping as soon as its output passes ``max_output_bytes``.

    Counted in characters while streaming (cheap), then in UTF-8 bytes once at the end.
    """
    meter.start_part()
    cap = meter.limits.max_output_bytes
    written = 0
    chunks: list[str] = []
    for chunk in template.generate(context):
        written += len(chunk)
        if written > cap:
            raise Overrun("max_output_bytes", f"more than {cap} bytes of output")
        chunks.append(chunk)
    out = "".join(chunks)
    if not out.isascii() and len(out.encode("utf-8", "surrogatepass")) > cap:
        raise Overrun("max_output_bytes", f"more than {cap} bytes of output")
    return out


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """A sandbox whose every costly operation charges the current :class:`Meter`.

    Immutable (Jinja's own): no list, dict or set is modified (``append``, ``update``...), so a
    template cannot change a lead's data, which outlives the render (the sample lead of campaign
    creation, a provider's template model) nor double a list in place; ``namespace()`` and
    ``set`` are how a template keeps state."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *, autoescape: bool) -> None:
        # Jinja still folds constant expressions while compiling, as it always did (with a
        # fresh meter per operation: the size checks apply); the context-taking loop and ~
        # filters are never folded, so loops are charged at render time.
        super().__init__(autoescape=autoescape, undefined=jinja2.ChainableUndefined, finalize=_finalize)
        self.globals["range"] = _range
        self.globals["lipsum"] = _guarded_lipsum(generate_lorem_ipsum)
        self.filters = {name: _guard(name, function) for name, function in self.filters.items()}
        self.filters[LOOP_FILTER] = _loop_items
        self.filters[CONCAT_FILTER] = _concat

    def budgeted(self, source: str) -> jinja2.Template:
        """Compile ``source`` with its loops and ``~`` rewritten to charge the meter."""
        ast = _Rewriter(self).visit(self.parse(source))
        ast.set_environment(self)
        return self.from_string(ast)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        meter = METER.get(None) or current()
        meter.tick()
        if operator == "*" or operator == "**" or type(left) not in _NUMBERS or type(right) not in _NUMBERS:
            _check_binop(meter, operator, left, right)
        result = self.binop_table[operator](left, right)
        if isinstance(result, _MEASURED):
            meter.size(len(result), f"'{operator}'")
        return result

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        meter = current()
        meter.tick()
        if isinstance(obj, LoopContext) and args:  # loop(children) of a recursive for
            args = (_counted(meter, args[0], 0, "a recursive loop"), *args[1:])
        args = _check_call(meter, obj, args, kwargs)
        result = super().call(context, obj, *args, **kwargs)
        _check_value(meter, result, "a call")
        return result


# --- the rewritten template: loops and ~ ---------------------------------------------------------


class _Rewriter(NodeTransformer):
    def __init__(self, environment: jinja2.Environment) -> None:
        self.eval_context = nodes.EvalContext(environment)

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        literal = nodes.Const(_literal_size(node.body), lineno=node.lineno)
        node.iter = nodes.Filter(node.iter, LOOP_FILTER, [literal], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        try:
            node.as_const(self.eval_context)
        except nodes.Impossible:
            pass
        else:
            return node  # constants only: Jinja folds it while compiling, as it always did
        items = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(items, CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


def _literal_size(body: list[nodes.Node]) -> int:
    """Characters of literal text one iteration of a loop body may write (inner loops pay
    their own): its template data and string constants, which Jinja outputs without a hook."""
    total = 0
    stack: list[nodes.Node] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.TemplateData):
            total += len(node.data)
        elif isinstance(node, nodes.Const) and isinstance(node.value, str):
            total += len(node.value)
        elif isinstance(node, nodes.For):
            stack.extend(node.else_)
        else:
            stack.extend(node.iter_child_nodes())
    return total


@pass_context
def _loop_items(context: jinja2.runtime.Context, value: Any, literal: int = 0) -> Any:
    return _counted(current(), value, literal, "for loops")


def _counted(meter: Meter, value: Any, literal: int, what: str) -> Any:
    """``value`` charged item by item (all at once when its length is known)."""
    if hasattr(value, "__len__"):
        count = len(value)
        meter.iterate(count, what)
        meter.produce(count * literal)
        return value
    if hasattr(value, "__iter__"):
        return _counting(meter, value, literal, what)
    return value  # not iterable: the loop or filter fails on its own


def _counting(meter: Meter, items: Iterable[Any], literal: int, what: str) -> Iterator[Any]:
    for item in items:
        meter.iterate(1, what)
        meter.produce(literal)
        yield item


@pass_context
def _concat(context: jinja2.runtime.Context, items: list[Any]) -> Any:
    """What ``~`` does (a Markup result when escaping is on), measured before it is joined."""
    meter = current()
    meter.tick()
    meter.size(sum(_text_size(meter, item, "a ~ concatenation") for item in items), "a ~ concatenation")
    texts = [item if isinstance(item, str) else str(item) for item in items]
    return markup_join(texts) if context.eval_ctx.autoescape else str_join(texts)


def _finalize(value: Any) -> Any:
    """Every printed value, in the output or captured by a block: what Jinja prints, measured.

    (Constant output is measured once, while the template compiles, on a meter of its own.)"""
    meter = METER.get(None) or current()
    if not isinstance(value, str):
        if hasattr(value, "__html__"):
            meter.tick()
            return value
        if type(value) not in _NUMBERS:  # str() of a container builds all of it in one C call
            _text_size(meter, value, "a printed value")
        value = str(value)
    meter.produce(len(value))
    return value


def _range(*args: int) -> range:
    """The sandbox's range: never more numbers than the loop iterations left, nor MAX_RANGE."""
    numbers = range(*args)
    meter = current()
    meter.tick()
    if len(numbers) > meter.iterations_left:
        raise Overrun(
            "max_loop_iterations",
            f"range() of {len(numbers)} numbers, more than the {meter.iterations_left} loop iterations left",
        )
    if len(numbers) > MAX_RANGE:
        detail = f"range() of {len(numbers)} numbers (the sandbox allows {MAX_RANGE})"
        raise Overrun("max_loop_iterations", detail)
    return numbers


def _guarded_lipsum(lipsum: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(lipsum)
    def guarded(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> Any:
        meter = current()
        meter.iterate(n * max, "lipsum()")
        meter.size(n * max * 12, "lipsum()")
        return lipsum(n, html, min, max)

    return guarded


# --- values -----------------------------------------------------------------------------------------


def _check_value(meter: Meter, value: Any, what: str) -> None:
    if isinstance(value, _MEASURED):
        meter.size(len(value), what)


def _check_binop(meter: Meter, operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            _check_int_bits(left.bit_length() + right.bit_length())
        elif isinstance(left, _MEASURED) and isinstance(right, int):
            meter.size(len(left) * right, f"'{operator}'")
        elif isinstance(right, _MEASURED) and isinstance(left, int):
            meter.size(len(right) * left, f"'{operator}'")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _check_int_bits(left.bit_length() * right)
    elif operator == "+":
        if isinstance(left, _MEASURED) and isinstance(right, _MEASURED):
            meter.size(len(left) + len(right), "'+'")
    elif operator == "%" and isinstance(left, str):
        meter.size(_printf_size(meter, left, right, "'%'"), "'%'")


def _check_int_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise Overrun("integer_size", f"an integer of more than {MAX_INT_BITS} bits")


def _text_size(meter: Meter, value: Any, what: str) -> int:
    """About the length of ``str(value)``, found without building it; raises :class:`Overrun`
    once it passes ``max_output_bytes`` (see :class:`_Sizer`)."""
    if isinstance(value, str):
        return len(value)
    return _Sizer(meter, what).size(value)


def _text(meter: Meter, value: Any, what: str) -> str:
    """``str(value)``, refused before it is built when it would pass ``max_output_bytes``."""
    if isinstance(value, str):
        return value
    _text_size(meter, value, what)
    return str(value)


class _Sizer:
    """The length of a value's text, walked before Python builds it in one C call where no hook
    runs (``str([[1] * 100] * 100)``, ``json.dumps``, ``'{}'.format(list)``...).

    Each container is walked once: a shared one is counted again from memory, so nested lists of
    one list repeated cost what they look like, not what they print. The walk stops as soon as
    the text passes ``max_output_bytes``, so it visits at most about that many items, and looks
    at the clock as it goes. Escapes in a string's repr are not counted: at most a few times the
    limit is built, and the output limit then stops it. ``items`` counts the items the text
    holds, repeats included (what a pure-Python walk such as ``pprint`` would visit).
    """

    __slots__ = ("cap", "deepest", "depth", "items", "meter", "seen", "visits", "what")

    def __init__(self, meter: Meter, what: str) -> None:
        self.meter = meter
        self.what = what
        self.cap = meter.limits.max_output_bytes
        self.seen: dict[int, tuple[int, int]] = {}  # id -> (characters, items) of a container done
        self.visits = 0
        self.items = 0
        self.depth = self.deepest = 0  # containers within containers (for indents)

    def size(self, value: Any) -> int:
        """The whole value's text (``str()`` of it)."""
        if isinstance(value, str):
            return len(value)
        size, self.items = self._size(value, self.cap)
        return size

    def _size(self, value: Any, left: int) -> tuple[int, int]:
        """``value``'s repr in a container: (characters, items); Overrun past ``left``."""
        kind = type(value)
        if kind is int:
            return value.bit_length() * 3 // 10 + 2, 1
        if kind is float or kind is bool or value is None:
            return 24, 1
        if isinstance(value, str):
            return self._fits(len(value) + 2, left), 1
        if isinstance(value, bytes):
            return self._fits(4 * len(value) + 3, left), 1
        known = self.seen.get(id(value))
        if known is not None:
            return self._fits(known[0], left), known[1]
        members = _members(value)
        if members is None:
            return 64, 1  # any other object a template reaches prints its type and address
        return self._container(value, *members, left)

    def _container(
        self, value: Any, items: Iterable[Any], pairs: bool, overhead: int, left: int
    ) -> tuple[int, int]:
        self.seen[id(value)] = (5, 1)  # while walked: a cycle prints "[...]"
        total, count = self._fits(overhead, left), 0
        self.depth += 1
        self.deepest = max(self.deepest, self.depth)
        for item in items:
            self.visits += 1
            if self.visits & 0xFFF == 0:
                self.meter.check_clock()
            if pairs:
                key, key_count = self._size(item[0], left - total)
                size, item_count = self._size(item[1], left - total - key)
                size += key + 4
                item_count += key_count
            elif type(item) is str:  # the common items, without a call (lists of a lead's data)
                size, item_count = len(item) + 4, 1
            elif type(item) is int:
                size, item_count = item.bit_length() * 3 // 10 + 4, 1
            else:
                size, item_count = self._size(item, left - total)
                size += 2
            total += size
            count += item_count
            if total > left:
                self._fits(total, left)
        self.depth -= 1
        self.seen[id(value)] = (total, count)
        return total, count

    def _fits(self, size: int, left: int) -> int:
        if size > left:
            cap = self.cap
            raise Overrun("max_output_bytes", f"{self.what} of more than {cap} characters (at most {cap})")
        return size


def _members(value: Any) -> tuple[Iterable[Any], bool, int] | None:
    """What a container's repr shows: its items (or key-value pairs), whether they are pairs,
    and the length of the rest (brackets, type name); None for what is no container."""
    if isinstance(value, list | tuple | set | frozenset):
        return value, False, 12
    if isinstance(value, dict):
        return value.items(), True, 12
    if isinstance(value, _VIEWS):
        return value.mapping.items(), True, 16
    if isinstance(value, Namespace):
        return object.__getattribute__(value, "_Namespace__attrs").items(), True, 16
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a Lead
        fields = [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
        return fields, True, len(type(value).__name__) + 2
    return None


def _widest(numbers: Iterable[str]) -> int:
    return max((int(n) if len(n) < 10 else 10**10 for n in numbers), default=0)


def _printf_size(meter: Meter, template: str, values: Any, what: str) -> int:
    """An upper bound of the length of ``template % values``."""
    conversions = _PRINTF.findall(template)
    if not conversions:
        return len(template)
    if isinstance(values, Mapping):
        items = list(values.values())
    else:
        items = list(values) if isinstance(values, tuple) else [values]
    widest, star = 0, False
    for width, precision in conversions:
        for number in (width, precision):
            if number == "*":
                star = True
            elif number:
                widest = max(widest, int(number) if len(number) < 10 else 10**10)
    if star:
        widest = max([widest, *(abs(v) for v in items if isinstance(v, int))])
    biggest = max((_text_size(meter, v, what) for v in items), default=0)
    return len(template) + len(conversions) * max(widest, biggest)


def _format_size(
    meter: Meter, template: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], what: str
) -> int:
    """An upper bound of the length of ``template.format(*args, **kwargs)``.

    A field's spec may hold fields of its own (``'{0:{1}}'``): their text is part of the spec,
    so the spec is filled in (as ``str.format`` would, numbering ``{}`` fields in the same order)
    before its width and precision are read; a string holds a width as well as a number does.
    """
    formatter = string.Formatter()
    values = [*args, *kwargs.values()]
    widest, fields, auto = 0, 0, [0]
    for _, name, spec, _ in formatter.parse(template):
        if name is None:
            continue
        fields += 1
        _field_value(name, args, kwargs, auto)  # numbers the fields as str.format does
        if spec and "{" in spec:
            filled: list[str] = []
            for literal, inner, nested, _ in formatter.parse(spec):
                filled.append(literal)
                if inner is not None:
                    filled.append(_nested_text(meter, inner, nested or "", args, kwargs, auto, what))
            spec = "".join(filled)
        widest = max(widest, _widest(_DIGITS.findall(spec or "")))
    biggest = max((_text_size(meter, v, what) for v in values), default=0)
    return len(template) + fields * max(widest, biggest)


_MISSING: Final = object()


def _field_value(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], auto: list[int]) -> Any:
    """The argument a replacement field names (before any ``.attribute`` or ``[item]``)."""
    first = _FIELD_FIRST.match(name)
    key = first.group() if first is not None else ""
    if not key:
        index, auto[0] = auto[0], auto[0] + 1
        return args[index] if index < len(args) else _MISSING
    if key.isdecimal():
        return args[int(key)] if len(key) < 10 and int(key) < len(args) else _MISSING
    return kwargs.get(key, _MISSING)


def _nested_text(
    meter: Meter,
    name: str,
    spec: str,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    auto: list[int],
    what: str,
) -> str:
    """What a field nested in a spec may put there, with as many digits as it could hold."""
    value = _field_value(name, args, kwargs, auto)
    if value is _MISSING:
        return ""  # str.format fails on it
    if _FIELD_FIRST.fullmatch(name) and isinstance(value, int | float | str):
        text = _text(meter, value, what)
    else:  # an attribute or item of it, or an object: no longer than its whole text
        text = "9" * min(11, _text_size(meter, value, what))
    if spec:  # its own spec may pad it, even with digits: '{1:9>9}'
        text = "9" * min(11, max(len(text), _widest(_DIGITS.findall(spec))))
    return text


# --- calls and filters ----------------------------------------------------------------------------


def _check_call(meter: Meter, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a str method call whose result would be too big; the arguments to call it with."""
    target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
    text = getattr(target, "__self__", None)
    if not isinstance(text, str):
        return args
    name = getattr(target, "__name__", "")
    what = f"str.{name}()"
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        meter.size(args[0], what)
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            meter.size(len(text) + text.count("\t") * tabsize, what)
    elif name == "replace" and len(args) >= 2:
        meter.size(_replace_size(text, *args), what)
    elif name == "join" and args:
        items = list(_counted(meter, args[0], 0, what))
        meter.size(len(text) * len(items) + sum(_text_size(meter, v, what) for v in items), what)
        args = (items, *args[1:])
    elif name in ("format", "format_map"):
        values = args[0] if name == "format_map" and args else kwargs
        values = values if isinstance(values, Mapping) else {}
        meter.size(_format_size(meter, text, args if name == "format" else (), values, what), what)
    elif name == "translate" and args and isinstance(args[0], Mapping):
        biggest = max((_text_size(meter, v, what) for v in args[0].values()), default=1)
        meter.size(len(text) * biggest, what)
    return args


def _replace_size(text: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(text)
    matches = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        matches = min(matches, count)
    return len(text) + matches * max(0, len(new) - len(old))


def _guard(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (a filter) charging the meter: its walk, its result, and its own risks."""
    walks = name in _WALKING
    stringifies = name in _STRINGIFYING
    check = _FILTER_CHECKS.get(name)
    bind = _binder(function) if check is not None else None
    at = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0  # the value's position

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        meter = METER.get(None) or current()
        meter.tick()
        if walks and len(args) > at:
            value = _counted(meter, args[at], 0, f"the {name} filter")
            if isinstance(value, Iterator):
                value = list(value)  # charged while it is read; measurable from now on
            args = (*args[:at], value, *args[at + 1 :])
        if stringifies and len(args) > at and not isinstance(args[at], str):
            _text_size(meter, args[at], f"the {name} filter")
        if check is not None and bind is not None:
            check(meter, bind(args[at:], kwargs))
        result = function(*args, **kwargs)
        if isinstance(result, _MEASURED):
            meter.size(len(result), f"the {name} filter")
        return result

    return guarded


def _binder(function: Callable[..., Any]) -> Callable[[tuple[Any, ...], dict[str, Any]], dict[str, Any]]:
    """A fast ``inspect.Signature.bind`` with defaults of a filter's arguments from its value on,
    for well-formed calls (a malformed one fails in the filter itself right after)."""
    inner = inspect.unwrap(function)  # Jinja's async variants wrap the filter and add a pass arg
    parameters = list(inspect.signature(inner).parameters.values())
    if getattr(inner, "jinja_pass_arg", None) is not None:
        parameters = parameters[1:]
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
    star = next((p.name for p in parameters if p.kind is p.VAR_POSITIONAL), None)
    star_star = next((p.name for p in parameters if p.kind is p.VAR_KEYWORD), None)

    def bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        named = {**defaults, **dict(zip(positional, args, strict=False))}
        if star is not None:
            named[star] = args[len(positional) :]
        if star_star is not None:
            named[star_star] = kwargs
        else:
            named.update(kwargs)
        return named

    return bind


def _check_center(meter: Meter, a: dict[str, Any]) -> None:
    if isinstance(a["width"], int):
        meter.size(a["width"], "the center filter")


def _check_indent(meter: Meter, a: dict[str, Any]) -> None:
    text, width = _text(meter, a["s"], "the indent filter"), a["width"]
    indent = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    meter.size(len(text) + (text.count("\n") + 1) * indent, "the indent filter")


def _check_format(meter: Meter, a: dict[str, Any]) -> None:
    values = a["kwargs"] or a["args"]
    what = "the format filter"
    meter.size(_printf_size(meter, _text(meter, a["value"], what), values, what), what)


def _check_replace(meter: Meter, a: dict[str, Any]) -> None:
    count = a["count"] if a["count"] is not None else -1
    text = _text(meter, a["s"], "the replace filter")
    meter.size(_replace_size(text, a["old"], a["new"], count), "the replace filter")


def _check_wordwrap(meter: Meter, a: dict[str, Any]) -> None:
    text = _text(meter, a["s"], "the wordwrap filter")
    width = max(1, a["width"] if isinstance(a["width"], int) else 1)
    lines = len(text) // width + text.count("\n") + 1
    meter.iterate(text.count(" ") + lines, "the wordwrap filter")
    meter.size(len(text) + lines * len(a["wrapstring"] or "\n"), "the wordwrap filter")


def _check_join(meter: Meter, a: dict[str, Any]) -> None:
    what = "the join filter"
    items, separator = a["value"], _text(meter, a["d"], what)
    meter.size(len(separator) * len(items) + sum(_text_size(meter, v, what) for v in items), what)


def _check_batch(meter: Meter, a: dict[str, Any]) -> None:
    if isinstance(a["linecount"], int):
        meter.size(a["linecount"], "the batch filter")


def _check_slice(meter: Meter, a: dict[str, Any]) -> None:
    if isinstance(a["slices"], int):
        meter.iterate(a["slices"], "the slice filter")


def _check_sum(meter: Meter, a: dict[str, Any]) -> None:
    if not isinstance(a["start"], int | float):  # adding lists copies them: quadratic
        count = len(a["iterable"])
        meter.iterate(count * count // 2, "the sum filter")


def _check_tojson(meter: Meter, a: dict[str, Any]) -> None:
    indent = a["indent"]
    width = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    if width > TOJSON_MAX_INDENT:  # repeated on every line, times the depth
        raise Overrun("max_output_bytes", f"a tojson indent of {width} (at most {TOJSON_MAX_INDENT})")
    _check_dump(meter, a["value"], max(width, 0), "the tojson filter")


def _check_pprint(meter: Meter, a: dict[str, Any]) -> None:
    _check_dump(meter, a["value"], 1, "the pprint filter")


def _check_dump(meter: Meter, value: Any, indent: int, what: str) -> None:
    """``json.dumps`` and ``pprint`` build a value's whole text without a hook (with an indent,
    or pprint's line breaks, in pure Python, item by item): each item counts as a loop
    iteration, and the text with its indents must fit."""
    sizer = _Sizer(meter, what)
    size = sizer.size(value)
    meter.iterate(sizer.items, what)
    meter.size(size + sizer.items * indent * sizer.deepest, what)


def _check_urlize(meter: Meter, a: dict[str, Any]) -> None:
    text = _text(meter, a["value"], "the urlize filter")
    words = text.count(" ") + text.count("\n") + 1
    meter.iterate(words, "the urlize filter")
    extra = len(a["target"] or "") + len(a["rel"] or "") + 64
    meter.size(2 * len(text) + words * extra, "the urlize filter")


_FILTER_CHECKS: Final[dict[str, Callable[[Meter, dict[str, Any]], None]]] = {
    "center": _check_center,
    "indent": _check_indent,
    "format": _check_format,
    "replace": _check_replace,
    "wordwrap": _check_wordwrap,
    "join": _check_join,
    "batch": _check_batch,
    "slice": _check_slice,
    "sum": _check_sum,
    "tojson": _check_tojson,
    "pprint": _check_pprint,
    "urlize": _check_urlize,
}
