"""Campaign content: Jinja2 templates for subject, HTML and text, and their SES form.

Pure: Jinja2 only. Templates run in the sandboxed environment; HTML is autoescaped, subject
and text are not. Missing values render empty (``ChainableUndefined``): lead attributes are
often sparse, and SES templates (see :func:`ses_template`) behave the same way because
:func:`template_data` always sends every variable, empty when the lead lacks it.

The names a template may use: ``lead`` (``id``, ``email``, ``attributes``), ``campaign``
(``id``, ``name``, ``account_id``) and ``unsubscribe_url``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, Final

import jinja2
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from mailerd.models import Campaign, Lead

PARTS: Final = ("subject", "html", "text")
NAMES: Final = frozenset({"lead", "campaign", "unsubscribe_url"})

_HTML_ENV: Final = SandboxedEnvironment(autoescape=True, undefined=jinja2.ChainableUndefined)
_PLAIN_ENV: Final = SandboxedEnvironment(autoescape=False, undefined=jinja2.ChainableUndefined)
_UNSUPPORTED: Final = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)
_LEAD_FIELDS: Final = frozenset({"id", "email"})
_CAMPAIGN_FIELDS: Final = frozenset({"id", "name", "account_id"})
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

    def render(self, lead: Lead, campaign: Campaign, unsubscribe_url: str = "") -> tuple[str, str, str]:
        """The recipient's ``(subject, html, text)``; raises :class:`RenderError`."""
        context = {
            "lead": lead,
            "campaign": {
                "id": campaign.id,
                "name": campaign.name,
                "account_id": campaign.account_id,
            },
            "unsubscribe_url": unsubscribe_url,
        }
        out: list[str] = []
        for part, template in zip(
            PARTS, (self.subject_template, self.html_template, self.text_template), strict=True
        ):
            try:
                out.append(template.render(context))
            except Exception as exc:  # any template failure is this recipient's alone
                raise RenderError(part, f"{type(exc).__name__}: {exc}") from exc
        return out[0], out[1], out[2]


def compile_content(subject: str, html: str, text: str) -> Content:
    """Compile and validate the three parts; raises :class:`TemplateError` on the first problem."""
    asts: list[nodes.Template] = []
    templates: list[jinja2.Template] = []
    for part, source in zip(PARTS, (subject, html, text), strict=True):
        env = _HTML_ENV if part == "html" else _PLAIN_ENV
        try:
            ast = env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(part, exc.lineno, exc.message or "syntax error") from None
        _check(part, ast)
        asts.append(ast)
        templates.append(env.from_string(ast))
    return Content(
        subject,
        html,
        text,
        templates[0],
        templates[1],
        templates[2],
        (asts[0], asts[1], asts[2]),
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
