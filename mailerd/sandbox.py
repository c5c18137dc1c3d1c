"""The Jinja2 sandbox with a budget: what one render of tenant content may cost.

Pure: Jinja2 only. Jinja's sandbox keeps templates away from Python's internals, but not from
the CPU or the memory: ``{% for i in range(5000) %}{% for j in range(5000) %}`` or
``{{ 'x' * 10**9 }}`` would stall the event loop. :class:`BudgetedEnvironment` bounds, per
render of one recipient (see :class:`mailerd.config.ContentConfig` for the settings):

- loop iterations (``max_loop_iterations``, the three parts together): every item of every
  ``for`` (nested and recursive loops included), every item a filter walks (``join``, ``sort``,
  ``map``...), and ``range()`` refuses more numbers than the iterations left (or than the
  sandbox's own ``MAX_RANGE``);
- sizes (``max_output_bytes``): no string, list or mapping an operator (``*``, ``+``, ``%``,
  ``~``), a filter or a method call builds may hold more than ``max_output_bytes`` characters
  or items, checked *before* the big ones are built (``'x' * 10**9``, ``'x'|center(10**9)``,
  ``'%999999999s'|format(1)``...); integers stay under :data:`MAX_INT_BITS`; each part's output
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

import functools
import inspect
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import jinja2
from jinja2 import nodes
from jinja2.runtime import LoopContext, markup_join, str_join
from jinja2.sandbox import MAX_RANGE, SandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum, pass_context
from jinja2.visitor import NodeTransformer

from mailerd.meter import METER, Meter, Overrun, current

MAX_INT_BITS: Final = 14_000  # about 4200 digits: Python converts no more than 4300 to text
TOJSON_MAX_INDENT: Final = 16
LOOP_FILTER: Final = "mailerd_loop"
CONCAT_FILTER: Final = "mailerd_concat"
# Filters that walk their whole input, item by item: each item counts as a loop iteration.
_WALKING: Final = frozenset(
    {"batch", "dictsort", "groupby", "join", "list", "map", "max", "min", "pprint", "reject"}
    | {"rejectattr", "reverse", "select", "selectattr", "slice", "sort", "sum", "tojson", "unique"}
    | {"items", "xmlattr"}
)
_MEASURED: Final = (str, bytes, list, tuple, dict, set, frozenset)
_NUMBERS: Final = frozenset({int, float})
_PRINTF: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[a-zA-Z%]")
_DIGITS: Final = re.compile(r"\d+")


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


class BudgetedEnvironment(SandboxedEnvironment):
    """A sandbox whose every costly operation charges the current :class:`Meter`."""

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
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, list | dict | set):  # append, extend, update...
            _check_value(meter, owner, "a list")
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
    texts = [item if isinstance(item, str) else str(item) for item in items]
    meter.size(sum(map(len, texts)), "a ~ concatenation")
    return markup_join(texts) if context.eval_ctx.autoescape else str_join(texts)


def _finalize(value: Any) -> Any:
    """Every printed value, in the output or captured by a block: what Jinja prints, measured.

    (Constant output is measured once, while the template compiles, on a meter of its own.)"""
    meter = METER.get(None) or current()
    if not isinstance(value, str):
        if hasattr(value, "__html__"):
            meter.tick()
            return value
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
        meter.size(_printf_size(left, right), "'%'")


def _check_int_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise Overrun("integer_size", f"an integer of more than {MAX_INT_BITS} bits")


def _text_size(value: Any) -> int:
    """About what ``str(value)`` would take, without building it."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, _MEASURED):
        return 16 * len(value)
    return 32


def _widest(numbers: Iterable[str]) -> int:
    return max((int(n) if len(n) < 10 else 10**10 for n in numbers), default=0)


def _printf_size(template: str, values: Any) -> int:
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
    biggest = max(map(_text_size, items), default=0)
    return len(template) + len(conversions) * max(widest, biggest)


def _format_size(template: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """An upper bound of the length of ``template.format(*args, **kwargs)``."""
    fields = [spec or "" for _, name, spec, _ in string.Formatter().parse(template) if name is not None]
    values = [*args, *kwargs.values()]
    widest = _widest(n for spec in fields for n in _DIGITS.findall(spec))
    if any("{" in spec for spec in fields):
        widest = max([widest, *(abs(v) for v in values if isinstance(v, int))])
    biggest = max((_text_size(v) for v in values), default=0)
    return len(template) + len(fields) * max(widest, biggest)


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
        meter.size(len(text) * len(items) + sum(_text_size(v) for v in items), what)
        args = (items, *args[1:])
    elif name in ("format", "format_map"):
        values = args[0] if name == "format_map" and args else kwargs
        values = values if isinstance(values, Mapping) else {}
        meter.size(_format_size(text, args if name == "format" else (), values), what)
    elif name == "translate" and args and isinstance(args[0], Mapping):
        meter.size(len(text) * max((_text_size(v) for v in args[0].values()), default=1), what)
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
    text, width = str(a["s"]), a["width"]
    indent = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    meter.size(len(text) + (text.count("\n") + 1) * indent, "the indent filter")


def _check_format(meter: Meter, a: dict[str, Any]) -> None:
    values = a["kwargs"] or a["args"]
    meter.size(_printf_size(str(a["value"]), values), "the format filter")


def _check_replace(meter: Meter, a: dict[str, Any]) -> None:
    count = a["count"] if a["count"] is not None else -1
    meter.size(_replace_size(str(a["s"]), a["old"], a["new"], count), "the replace filter")


def _check_wordwrap(meter: Meter, a: dict[str, Any]) -> None:
    text, width = str(a["s"]), max(1, a["width"] if isinstance(a["width"], int) else 1)
    lines = len(text) // width + text.count("\n") + 1
    meter.iterate(text.count(" ") + lines, "the wordwrap filter")
    meter.size(len(text) + lines * len(a["wrapstring"] or "\n"), "the wordwrap filter")


def _check_join(meter: Meter, a: dict[str, Any]) -> None:
    items, separator = a["value"], str(a["d"])
    meter.size(len(separator) * len(items) + sum(_text_size(v) for v in items), "the join filter")


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


def _check_urlize(meter: Meter, a: dict[str, Any]) -> None:
    text = str(a["value"])
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
    "urlize": _check_urlize,
}
