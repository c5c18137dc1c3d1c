"""Campaign content: Jinja2 templates for subject, HTML and text, and their SES form.

Pure: Jinja2 only (and ``asyncio.to_thread`` for :func:`check_renders`). Templates run in the
sandboxed environment; HTML is autoescaped, subject and text are not. Missing values render
empty (``ChainableUndefined``): lead attributes are often sparse, and SES templates (see
:func:`ses_template`) behave the same way because :func:`template_data` always sends every
variable, empty when the lead lacks it.

The names a template may use: ``lead`` (``id``, ``email``, ``attributes``), ``campaign``
(``id``, ``name``, ``account_id``) and ``unsubscribe_url``.

Templates are tenant content, so every render runs on a budget (:mod:`mailerd.sandbox`):
loop iterations, output and value sizes, and CPU time, set by ``[content]``
(:class:`~mailerd.config.ContentConfig`). How the pieces fit:

- ``compile_content(subject, html, text, limits=config.content)`` compiles once per campaign
  (syntax and names only: cheap, safe on the event loop); :class:`TemplateError` names the part
  and line.
- ``await check_renders(content, sample_lead, campaign, timeout_s=config.content.render_timeout_ms
  / 1000)`` at campaign creation renders a sample lead off the event loop, under the budget and a
  wall-clock limit; a template that cannot render within the budget is refused there with
  :class:`BudgetExceeded` (``limit == "render_timeout_ms"`` when the wait ran out) or
  :class:`RenderError`, whose message names the part and the limit. A template accepted there
  holds the loop at most ``max_render_ms`` per recipient at send time.
- ``content.render(...)`` / :func:`template_data` at send time render each recipient on the
  budget: a render past a limit raises :class:`BudgetExceeded` (a :class:`RenderError`) after at
  most ``max_render_ms`` of CPU; its ``limit`` is the setting's name (``max_loop_iterations``,
  ``max_output_bytes``, ``max_render_ms``, or ``integer_size``), so the sender can fail the
  campaign with ``str(exc)`` as the reason.

Measured on the development VM (a loaded 2-core box, CPU time of one render): a newsletter
template (subject, HTML and text; a dozen variables, a loop over 20 products with three filters
each) renders in about 0.5 ms with the budget (0.2 ms in Jinja's plain sandbox). The most any
render can hold the loop is ``max_render_ms`` (10 ms by default) of CPU and one clock check
more: 10.6 ms measured for 10,000 iterations of filters and outputs, for exponential macro
recursion, and for a loop over 500 KB strings; renders stopped by the other limits stop within
2 ms (nested ``range(5000)`` loops: 0.4 ms; ``'x' * 10**9``: 0.1 ms; 512 KiB of output: 1.5 ms).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Callable
from typing import Any, Final

import jinja2
from jinja2 import meta, nodes

from mailerd import meter as meter_mod
from mailerd import sandbox
from mailerd.config import ContentConfig
from mailerd.models import Campaign, Lead

PARTS: Final = ("subject", "html", "text")
NAMES: Final = frozenset({"lead", "campaign", "unsubscribe_url"})
SAMPLE_UNSUBSCRIBE_URL: Final = "https://unsubscribe.invalid/u/sample-token"

_HTML_ENV: Final = sandbox.BudgetedEnvironment(autoescape=True)
_PLAIN_ENV: Final = sandbox.BudgetedEnvironment(autoescape=False)
_UNSUPPORTED: Final = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)
_LEAD_FIELDS: Final = frozenset({"id", "email"})
_CAMPAIGN_FIELDS: Final = frozenset({"id", "name", "account_id"})
_TOO_DEEP: Final = "nested too deeply (brackets, operators, filters or blocks within one another)"
# A dict attribute that Jinja would resolve to a method, not to the lead attribute of that name.
_DICT_NAMES: Final = frozenset(dir(dict))

# The SES template used when the Jinja templates need more than plain variable output: the
# daemon renders each recipient's parts and ships them as template data.
GENERIC_SUBJECT: Final = "{{{subject}}}"
GENERIC_HTML: Final = "{{{html}}}"
GENERIC_TEXT: Final = "{{{text}}}"


class TemplateError(ValueError):
    """A template that does not compile: which part, which line, why."""

    def __init__(self, part: str, line: int | None, reason: str) -> None:
        where = f"{part} line {line}" if line is not None else part
        super().__init__(f"{where}: {reason}")
        self.part = part
        self.line = line
        self.reason = reason


class RenderError(ValueError):
    """A compiled template failed for one recipient (e.g. a sandbox violation at run time)."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"{part}: {reason}")
        self.part = part
        self.reason = reason


class BudgetExceeded(RenderError):
    """A render passed a limit of the template budget: ``part``, the ``limit`` passed (the name of
    its ``[content]`` setting, or ``integer_size``), and what happened (``detail``)."""

    def __init__(self, part: str, limit: str, detail: str) -> None:
        setting = f"; [content] {limit}" if limit in _SETTINGS else ""
        super().__init__(part, f"template budget exceeded: {detail}{setting}")
        self.limit = limit
        self.detail = detail


_SETTINGS: Final = frozenset(f.name for f in dataclasses.fields(ContentConfig))


@dataclasses.dataclass(slots=True)
class _Progress:
    """The part a render is at, for a caller that stopped waiting for it."""

    part: str = PARTS[0]


@dataclasses.dataclass(frozen=True, slots=True)
class Content:
    """A campaign's compiled subject, HTML and text templates (compile once per campaign)."""

    subject: str
    html: str
    text: str
    subject_template: jinja2.Template = dataclasses.field(repr=False, compare=False)
    html_template: jinja2.Template = dataclasses.field(repr=False, compare=False)
    text_template: jinja2.Template = dataclasses.field(repr=False, compare=False)
    asts: tuple[nodes.Template, nodes.Template, nodes.Template] = dataclasses.field(repr=False, compare=False)
    limits: ContentConfig = dataclasses.field(default=ContentConfig(), repr=False, compare=False)
    clock: Callable[[], float] = dataclasses.field(default=meter_mod.cpu_clock, repr=False, compare=False)

    def render(self, lead: Lead, campaign: Campaign, unsubscribe_url: str = "") -> tuple[str, str, str]:
        """The recipient's ``(subject, html, text)``, on the budget of :attr:`limits`.

        Raises :class:`BudgetExceeded` past a limit, :class:`RenderError` on any other failure.
        """
        return self._render(lead, campaign, unsubscribe_url, _Progress())

    def _render(
        self, lead: Lead, campaign: Campaign, unsubscribe_url: str, progress: _Progress
    ) -> tuple[str, str, str]:
        context = {
            "lead": lead,
            "campaign": {
                "id": campaign.id,
                "name": campaign.name,
                "account_id": campaign.account_id,
            },
            "unsubscribe_url": unsubscribe_url,
        }
        meter = meter_mod.Meter(self.limits, self.clock)
        token = meter_mod.METER.set(meter)
        try:
            out: list[str] = []
            for part, template in zip(
                PARTS, (self.subject_template, self.html_template, self.text_template), strict=True
            ):
                progress.part = part
                try:
                    out.append(sandbox.render_part(template, context, meter))
                except meter_mod.Overrun as exc:
                    raise BudgetExceeded(part, exc.limit, exc.detail) from None
                except Exception as exc:  # any template failure is this recipient's alone
                    raise RenderError(part, f"{type(exc).__name__}: {exc}") from exc
            return out[0], out[1], out[2]
        finally:
            meter_mod.METER.reset(token)


async def check_renders(
    content: Content,
    sample_lead: Lead,
    campaign: Campaign,
    *,
    timeout_s: float,
    unsubscribe_url: str = SAMPLE_UNSUBSCRIBE_URL,
) -> tuple[str, str, str]:
    """Render ``sample_lead`` off the event loop, on the budget, waiting at most ``timeout_s``.

    For campaign creation: returns the three parts, or raises :class:`BudgetExceeded` (a limit
    passed, or the wall-clock wait ran out: ``limit == "render_timeout_ms"``) or
    :class:`RenderError`. The thread of a render given up on stops by itself at ``max_render_ms``.
    """
    progress = _Progress()
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.to_thread(content._render, sample_lead, campaign, unsubscribe_url, progress)
    except TimeoutError:
        detail = f"the sample lead's render took more than {timeout_s * 1000:g} ms"
        raise BudgetExceeded(progress.part, "render_timeout_ms", detail) from None


def compile_content(
    subject: str,
    html: str,
    text: str,
    *,
    limits: ContentConfig = ContentConfig(),  # noqa: B008 -- frozen, shared safely
    clock: Callable[[], float] = meter_mod.cpu_clock,
) -> Content:
    """Compile and validate the three parts; raises :class:`TemplateError` on the first problem.

    ``limits`` is the budget of every render (``[content]``); ``clock`` measures a render's CPU
    time (:func:`mailerd.meter.cpu_clock`; tests pass their own).
    """
    asts: list[nodes.Template] = []
    templates: list[jinja2.Template] = []
    for part, source in zip(PARTS, (subject, html, text), strict=True):
        env = _HTML_ENV if part == "html" else _PLAIN_ENV
        try:
            ast = env.parse(source)
            _check(part, ast)
            template = env.budgeted(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(part, exc.lineno, exc.message or "syntax error") from None
        except (RecursionError, SyntaxError, MemoryError):
            # Jinja parses and compiles by recursion, and the Python it makes nests as the
            # template does: past a depth, Python's own limits raise these (as a 500, before).
            raise TemplateError(part, None, _TOO_DEEP) from None
        asts.append(ast)
        templates.append(template)
    return Content(
        subject,
        html,
        text,
        templates[0],
        templates[1],
        templates[2],
        (asts[0], asts[1], asts[2]),
        limits,
        clock,
    )


def _check(part: str, ast: nodes.Template) -> None:
    for node in ast.find_all(_UNSUPPORTED):
        keyword = type(node).__name__.lower().replace("fromimport", "import")
        raise TemplateError(part, node.lineno, f"{keyword} is not supported")
    unknown = meta.find_undeclared_variables(ast) - NAMES
    if unknown:
        first = min((n for n in ast.find_all(nodes.Name) if n.name in unknown), key=lambda n: n.lineno)
        raise TemplateError(
            part,
            first.lineno,
            f"unknown variable {first.name!r} (use lead, campaign or unsubscribe_url)",
        )


# --- SES templates ---------------------------------------------------------------------------

Path = tuple[str, ...]
_Key = tuple[Path, str | None]  # a path and its ``default("...")`` literal, if any
_Getter = Callable[[Lead, Campaign, str], str]


@dataclasses.dataclass(frozen=True, slots=True)
class SesTemplate:
    """A campaign's SES template: Handlebars-style parts, and what each recipient's data holds.

    ``variables`` maps each SES variable name to the Jinja path it stands for, e.g.
    ``"lead_attributes_first_name": ("lead", "attributes", "first_name")``; ``defaults`` holds
    the ``| default("...")`` literal of the variables that have one. ``generic`` means the parts
    are ``{{{subject}}}``/``{{{html}}}``/``{{{text}}}`` and the daemon renders them.
    """

    subject: str
    html: str
    text: str
    variables: dict[str, Path]
    defaults: dict[str, str]
    generic: bool
    getters: tuple[tuple[str, _Getter], ...] = dataclasses.field(repr=False, compare=False)


GENERIC: Final = SesTemplate(GENERIC_SUBJECT, GENERIC_HTML, GENERIC_TEXT, {}, {}, True, ())


def ses_template(content: Content) -> SesTemplate:
    """Translate plain-variable templates to SES syntax, else the generic template.

    Plain means literal text and ``{{ path }}`` or ``{{ path | default("literal") }}`` outputs.

    HTML variables are ``{{name}}`` (SES escapes them, as Jinja's autoescape would); subject and
    text variables are ``{{{name}}}`` (raw, as in Jinja without autoescape).
    """
    names: dict[_Key, str] = {}
    parts: list[str] = []
    for part, ast in zip(PARTS, content.asts, strict=True):
        translated = _translate(ast, names, escape=part == "html")
        if translated is None:
            return GENERIC
        parts.append(translated)
    variables = {name: path for (path, _), name in names.items()}
    defaults = {name: default for (_, default), name in names.items() if default is not None}
    getters = tuple((name, _getter(path, default or "")) for (path, default), name in names.items())
    return SesTemplate(parts[0], parts[1], parts[2], variables, defaults, False, getters)


def template_data(
    template: SesTemplate,
    content: Content,
    lead: Lead,
    campaign: Campaign,
    unsubscribe_url: str = "",
) -> dict[str, str]:
    """One recipient's ``ReplacementTemplateData`` (before JSON encoding); may raise RenderError."""
    if template.generic:
        subject, html, text = content.render(lead, campaign, unsubscribe_url)
        return {"subject": subject, "html": html, "text": text}
    return {name: get(lead, campaign, unsubscribe_url) for name, get in template.getters}


def _translate(ast: nodes.Template, names: dict[_Key, str], *, escape: bool) -> str | None:
    """The part in SES syntax, or None when it uses anything but literal text and variables."""
    out: list[str] = []
    for output in ast.body:
        if not isinstance(output, nodes.Output):
            return None
        for node in output.nodes:
            if isinstance(node, nodes.TemplateData):
                # Literal "{{" or a backslash before a variable would change meaning in Handlebars.
                if "{{" in node.data or node.data.endswith("\\"):
                    return None
                out.append(node.data)
                continue
            key = _variable(node)
            if key is None:
                return None
            name = names.get(key)
            if name is None:
                base = _variable_name(key[0]) + ("_or_default" if key[1] is not None else "")
                name = _unique(base, names)
                names[key] = name
            out.append(f"{{{{{name}}}}}" if escape else f"{{{{{{{name}}}}}}}")
    return "".join(out)


def _variable(node: nodes.Node) -> _Key | None:
    """A supported output expression: a path, optionally ``| default("literal")``."""
    if isinstance(node, nodes.Filter):
        if (
            node.name not in ("default", "d")
            or node.node is None
            or len(node.args) != 1
            or not isinstance(node.args[0], nodes.Const)
            or not isinstance(node.args[0].value, str)
            or node.kwargs
            or node.dyn_args is not None
            or node.dyn_kwargs is not None
        ):
            return None
        path = _path(node.node)
        if path is None:
            return None
        # Only lead attributes can be undefined; elsewhere the default never applies.
        return (path, node.args[0].value if path[1:2] == ("attributes",) else None)
    path = _path(node)
    return None if path is None else (path, None)


def _path(node: nodes.Node) -> Path | None:
    """``lead.attributes.first_name`` -> ``("lead", "attributes", "first_name")`` if supported."""
    reversed_path: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            reversed_path.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            if not isinstance(node.arg.value, str):
                return None
            reversed_path.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name):
            reversed_path.append(node.name)
            break
        else:
            return None
    path = tuple(reversed(reversed_path))
    root, rest = path[0], path[1:]
    if root == "unsubscribe_url" and not rest:
        return path
    if root == "campaign" and len(rest) == 1 and rest[0] in _CAMPAIGN_FIELDS:
        return path
    if root == "lead" and len(rest) == 1 and rest[0] in _LEAD_FIELDS:
        return path
    if (
        root == "lead"
        and len(rest) >= 2
        and rest[0] == "attributes"
        and not any(key in _DICT_NAMES for key in rest[1:])
    ):
        return path
    return None


def _variable_name(path: Path) -> str:
    return re.sub(r"\W", "_", "_".join(path), flags=re.ASCII)


def _unique(name: str, names: dict[_Key, str]) -> str:
    taken = set(names.values()) | {"subject", "html", "text"}
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def _text(value: Any) -> str:
    """What Jinja prints for a value (escaping is left to the template syntax)."""
    return value if type(value) is str else str(value)


def _getter(path: Path, missing: str = "") -> _Getter:
    """A small closure per variable (runs per recipient, so kept cheap); ``missing``: undefined."""
    root, rest = path[0], path[1:]
    if root == "unsubscribe_url":
        return lambda lead, campaign, url: url
    if root == "campaign":
        field = rest[0]
        return lambda lead, campaign, url: _text(getattr(campaign, field))
    if rest == ("email",):
        return lambda lead, campaign, url: lead.email
    if rest == ("id",):
        return lambda lead, campaign, url: str(lead.id)
    keys = rest[1:]
    if len(keys) == 1:
        key = keys[0]

        def attribute(lead: Lead, campaign: Campaign, url: str) -> str:
            value = lead.attributes.get(key)
            if value is None:
                return missing if key not in lead.attributes else "None"
            return _text(value)

        return attribute

    def nested(lead: Lead, campaign: Campaign, url: str) -> str:
        value: Any = lead.attributes
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return missing
            value = value[key]
        return _text(value)

    return nested
