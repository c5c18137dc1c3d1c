"""Campaign content: compile errors, rendering, the budget's API, and the SES template translation."""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import markupsafe
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailerd import content
from mailerd.config import ContentConfig
from mailerd.models import Campaign, CampaignStatus, Lead

CAMPAIGN = Campaign(
    id=12,
    account_id=7,
    name="Spring <sale>",
    status=CampaignStatus.RUNNING,
    segment=None,
    from_address="news@example.com",
    subject="",
    html_body="",
    text_body="",
    provider="sink",
)
LEAD = Lead(id=42, email="ann@example.com", attributes={"first_name": "Ann & Bo", "n": 3})


def compile_(subject: str = "s", html: str = "h", text: str = "t") -> content.Content:
    return content.compile_content(subject, html, text)


# --- compile errors ----------------------------------------------------------------------------


def test_syntax_error_names_part_and_line() -> None:
    with pytest.raises(content.TemplateError) as info:
        compile_(html="<p>\nhello\n{{ lead.email }</p>")
    assert info.value.part == "html"
    assert info.value.line == 3
    assert str(info.value) == f"html line 3: {info.value.reason}"
    assert "unexpected '}'" in info.value.reason


def test_unclosed_block_in_text() -> None:
    with pytest.raises(content.TemplateError, match=r"^text line 2: .*endif"):
        compile_(text="a\n{% if lead.id %}")


def test_unknown_variable_is_rejected_with_its_line() -> None:
    with pytest.raises(content.TemplateError) as info:
        compile_(subject="Hi", html="<p>\n\n{{ leads.email }}</p>")
    assert (info.value.part, info.value.line) == ("html", 3)
    assert "unknown variable 'leads'" in info.value.reason


def test_variables_set_inside_the_template_are_known() -> None:
    compiled = compile_(text="{% set who = lead.email %}{% for x in [1] %}{{ who }}{{ x }}{% endfor %}")
    assert compiled.render(LEAD, CAMPAIGN)[2] == "ann@example.com1"


@pytest.mark.parametrize("source", ["{% include 'x' %}", "{% extends 'x' %}", "{% import 'x' as y %}"])
def test_template_loading_is_rejected(source: str) -> None:
    with pytest.raises(content.TemplateError, match=r"^subject line 1: \w+ is not supported"):
        compile_(subject=source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ " + "(" * 100 + "1" + ")" * 100 + " }}",
        "{{ " + "(" * 20000 + "1" + ")" * 20000 + " }}",
        "{{ " + "[" * 200 + "]" * 200 + " }}",
        "{{ " + "{'a': " * 200 + "1" + "}" * 200 + " }}",
        "{% for a in [1] %}" * 25 + "x" + "{% endfor %}" * 25,
        "{% if 1 %}" * 300 + "x" + "{% endif %}" * 300,
        "{{ " + "not " * 3000 + "1 }}",
        "{{ 1" + "|string" * 3000 + " }}",
        "{{ 1" + "+1" * 5000 + " }}",
        "{{ lead.email" + ".strip()" * 3000 + " }}",
    ],
    ids=["parens", "parens-20000", "lists", "dicts", "for", "if", "not", "filters", "plus", "calls"],
)
def test_a_template_nested_too_deeply_is_a_template_error(source: str) -> None:
    """Python's recursion and block limits (RecursionError, SyntaxError 'too many statically
    nested blocks') escaped compile_content: a 500 at creation."""
    with pytest.raises(content.TemplateError) as info:
        compile_(text=source)
    assert (info.value.part, info.value.line) == ("text", None)
    assert str(info.value).startswith("text: nested too deeply")


def test_template_error_is_a_value_error() -> None:
    assert issubclass(content.TemplateError, ValueError)


# --- render ------------------------------------------------------------------------------------


def test_render_escapes_html_only() -> None:
    compiled = compile_(
        "Hi {{ lead.attributes.first_name }}",
        "<b>{{ lead.attributes.first_name }}</b> {{ campaign.name }}",
        "{{ lead.attributes.first_name }} / {{ campaign.name }} / {{ campaign.id }}",
    )
    subject, html, text = compiled.render(LEAD, CAMPAIGN)
    assert subject == "Hi Ann & Bo"
    assert html == "<b>Ann &amp; Bo</b> Spring &lt;sale&gt;"
    assert text == "Ann & Bo / Spring <sale> / 12"


def test_missing_values_render_empty() -> None:
    compiled = compile_(text="[{{ lead.attributes.nope }}|{{ lead.attributes.a.b.c }}]")
    assert compiled.render(LEAD, CAMPAIGN)[2] == "[|]"


def test_unsubscribe_url_and_campaign_fields() -> None:
    compiled = compile_(text="{{ unsubscribe_url }} {{ campaign.account_id }}")
    assert compiled.render(LEAD, CAMPAIGN, "https://u/1")[2] == "https://u/1 7"


def test_sandbox_blocks_unsafe_attributes() -> None:
    compiled = compile_(text="{{ lead.__class__.__mro__ }}")
    # The sandbox turns unsafe attributes into undefined values, rendered empty.
    assert compiled.render(LEAD, CAMPAIGN)[2] == ""


def test_runtime_failure_is_a_render_error() -> None:
    compiled = compile_(subject="{{ lead.id // 0 }}")
    with pytest.raises(content.RenderError) as info:
        compiled.render(LEAD, CAMPAIGN)
    assert info.value.part == "subject"
    assert "ZeroDivisionError" in info.value.reason


# --- the budget ------------------------------------------------------------------------------


def test_budget_exceeded_is_a_render_error_naming_part_and_setting() -> None:
    compiled = compile_(text="{% for i in range(20) %}{{ i }}{% endfor %}")
    limited = content.compile_content("s", "h", compiled.text, limits=ContentConfig(max_loop_iterations=10))
    with pytest.raises(content.RenderError) as info:
        limited.render(LEAD, CAMPAIGN)
    error = info.value
    assert isinstance(error, content.BudgetExceeded)
    assert (error.part, error.limit) == ("text", "max_loop_iterations")
    assert error.detail == "range() of 20 numbers, more than the 10 loop iterations left"
    assert str(error) == (
        "text: template budget exceeded: range() of 20 numbers, more than the 10 loop iterations left; "
        "[content] max_loop_iterations"
    )
    assert compiled.render(LEAD, CAMPAIGN)[2] == "".join(map(str, range(20)))


def test_the_limits_come_from_the_configuration() -> None:
    limits = ContentConfig(max_loop_iterations=5, max_output_bytes=2048, max_render_ms=7)
    compiled = content.compile_content("s", "h", "t", limits=limits)
    assert compiled.limits is limits
    assert content.compile_content("s", "h", "t").limits == ContentConfig()


def test_template_data_of_a_generic_template_is_on_the_budget_too() -> None:
    compiled = compile_(html="{{ lead.email * 100000 }}")
    ses = content.ses_template(compiled)
    assert ses.generic
    with pytest.raises(content.BudgetExceeded) as info:
        content.template_data(ses, compiled, LEAD, CAMPAIGN)
    assert (info.value.part, info.value.limit) == ("html", "max_output_bytes")


async def test_check_renders_renders_the_sample_lead_off_the_loop() -> None:
    compiled = compile_(
        "Hi {{ lead.attributes.first_name }}",
        "<a href='{{ unsubscribe_url }}'>{{ campaign.name }}</a>",
        "{% for i in range(3) %}{{ i }}{% endfor %}",
    )
    threads: list[str] = []
    clock = compiled.clock

    def spy() -> float:
        threads.append(threading.current_thread().name)
        return clock()

    spied = content.compile_content(compiled.subject, compiled.html, compiled.text, clock=spy)
    parts = await content.check_renders(spied, LEAD, CAMPAIGN, timeout_s=30)
    assert parts == (
        "Hi Ann & Bo",
        f"<a href='{content.SAMPLE_UNSUBSCRIBE_URL}'>Spring &lt;sale&gt;</a>",
        "012",
    )
    assert threads
    assert threading.main_thread().name not in threads


async def test_check_renders_refuses_what_passes_the_budget() -> None:
    compiled = compile_(html="{% for i in range(5000) %}{% for j in range(5000) %}{% endfor %}{% endfor %}")
    with pytest.raises(content.BudgetExceeded) as info:
        await content.check_renders(compiled, LEAD, CAMPAIGN, timeout_s=30)
    assert (info.value.part, info.value.limit) == ("html", "max_loop_iterations")
    with pytest.raises(content.RenderError, match=r"^subject: ZeroDivisionError"):
        await content.check_renders(compile_(subject="{{ 1 // 0 }}"), LEAD, CAMPAIGN, timeout_s=30)


async def test_check_renders_stops_waiting_at_the_timeout() -> None:
    """A render that does not come back in time is refused; its thread stops on its own."""
    gate = threading.Event()
    started = threading.Event()
    stopped = threading.Event()

    def stuck_clock() -> float:
        # The render's first look at its clock waits for the test; later ones say "too late".
        if not started.is_set():
            started.set()
            gate.wait(timeout=60)
            return 0.0
        stopped.set()
        return 1e9

    compiled = content.compile_content(
        "s", "{% for i in range(100) %}{{ i }}{% endfor %}", "t", clock=stuck_clock
    )
    try:
        with pytest.raises(content.BudgetExceeded) as info:
            await content.check_renders(compiled, LEAD, CAMPAIGN, timeout_s=0.05)
    finally:
        gate.set()
    assert (info.value.part, info.value.limit) == ("subject", "render_timeout_ms")
    assert str(info.value) == (
        "subject: template budget exceeded: the sample lead's render took more than 50 ms; "
        "[content] render_timeout_ms"
    )
    assert await asyncio.to_thread(stopped.wait, 30)  # the thread saw its deadline and stopped


# --- SES templates -----------------------------------------------------------------------------


def test_simple_templates_translate_to_ses_variables() -> None:
    compiled = compile_(
        "Hi {{ lead.attributes.first_name }}",
        "<p>{{ lead.attributes.first_name }} {{ lead.email }}</p>\n<a href='{{ unsubscribe_url }}'>x</a>",
        "{{ campaign.name }} {{ lead.attributes['first-name'] }} {{ lead.id }}\n",
    )
    ses = content.ses_template(compiled)
    assert not ses.generic
    assert ses.subject == "Hi {{{lead_attributes_first_name}}}"
    assert ses.html == (
        "<p>{{lead_attributes_first_name}} {{lead_email}}</p>\n<a href='{{unsubscribe_url}}'>x</a>"
    )
    # Jinja drops one trailing newline; so does the translation (it works from the parsed AST).
    assert ses.text == "{{{campaign_name}}} {{{lead_attributes_first_name_2}}} {{{lead_id}}}"
    assert ses.variables == {
        "lead_attributes_first_name": ("lead", "attributes", "first_name"),
        "lead_email": ("lead", "email"),
        "unsubscribe_url": ("unsubscribe_url",),
        "campaign_name": ("campaign", "name"),
        "lead_attributes_first_name_2": ("lead", "attributes", "first-name"),
        "lead_id": ("lead", "id"),
    }


@pytest.mark.parametrize(
    "text",
    [
        "{{ lead.email | upper }}",
        "{% if lead.attributes.vip %}VIP{% endif %}",
        "{% for x in [1, 2] %}{{ x }}{% endfor %}",
        "{{ lead.attributes }}",
        "{{ lead }}",
        "{{ campaign.from_address }}",
        "{{ lead.attributes.items }}",
        "{{ '{{' }}",
        "{% raw %}{{ literal }}{% endraw %}",
        "back\\{{ lead.email }}",
        "{{ lead.attributes[0] }}",
        "{{ 'x' }}",
        "{{ lead.attributes.a | default('x', true) }}",
        "{{ lead.attributes.a | default(lead.email) }}",
        "{{ lead.attributes.a | default(3) }}",
    ],
)
def test_anything_but_plain_variables_falls_back_to_the_generic_template(text: str) -> None:
    ses = content.ses_template(compile_(text=text))
    assert ses.generic
    assert (ses.subject, ses.html, ses.text) == ("{{{subject}}}", "{{{html}}}", "{{{text}}}")
    assert ses.variables == {}


def test_default_literal_stays_simple() -> None:
    compiled = compile_(
        "Hi {{ lead.attributes.first_name | default('there') }}",
        "<p>{{ lead.attributes.first_name | d('<you>') }} {{ lead.email | default('x') }}</p>",
        "{{ lead.attributes.first_name }}",
    )
    ses = content.ses_template(compiled)
    assert not ses.generic
    assert ses.subject == "Hi {{{lead_attributes_first_name_or_default}}}"
    assert ses.html == "<p>{{lead_attributes_first_name_or_default_2}} {{lead_email}}</p>"
    assert ses.defaults == {
        "lead_attributes_first_name_or_default": "there",
        "lead_attributes_first_name_or_default_2": "<you>",
    }
    data = content.template_data(ses, compiled, Lead(1, "a@b.c", {}), CAMPAIGN)
    assert data == {
        "lead_attributes_first_name_or_default": "there",
        "lead_attributes_first_name_or_default_2": "<you>",
        "lead_email": "a@b.c",
        "lead_attributes_first_name": "",
    }


def test_css_braces_stay_simple() -> None:
    ses = content.ses_template(compile_(html="<style>@media x { p { color: red }}</style>"))
    assert not ses.generic


def test_template_data_for_simple_templates() -> None:
    compiled = compile_(
        "{{ lead.attributes.first_name }}",
        "{{ lead.attributes.n }}{{ lead.attributes.none }}{{ lead.attributes.missing }}",
        "{{ lead.attributes.deep.er }} {{ lead.id }} {{ campaign.account_id }} {{ unsubscribe_url }}",
    )
    ses = content.ses_template(compiled)
    lead = Lead(5, "b@example.com", {"first_name": "Bo", "n": 3, "none": None, "deep": {"er": True}})
    data = content.template_data(ses, compiled, lead, CAMPAIGN, "https://u")
    assert data == {
        "lead_attributes_first_name": "Bo",
        "lead_attributes_n": "3",
        "lead_attributes_none": "None",
        "lead_attributes_missing": "",
        "lead_attributes_deep_er": "True",
        "lead_id": "5",
        "campaign_account_id": "7",
        "unsubscribe_url": "https://u",
    }


def test_template_data_for_the_generic_template_renders_with_jinja() -> None:
    compiled = compile_("{{ lead.email | upper }}", "<i>{{ campaign.name }}</i>", "t")
    data = content.template_data(content.ses_template(compiled), compiled, LEAD, CAMPAIGN)
    assert data == {
        "subject": "ANN@EXAMPLE.COM",
        "html": "<i>Spring &lt;sale&gt;</i>",
        "text": "t",
    }


def _handlebars(template: str, data: dict[str, str]) -> str:
    """Just enough Handlebars: ``{{{x}}}`` raw, ``{{x}}`` HTML-escaped."""

    def value(match: re.Match[str]) -> str:
        raw, escaped = match.group(1), match.group(2)
        return data[raw] if raw else str(markupsafe.escape(data[escaped]))

    return re.sub(r"\{\{\{(\w+)\}\}\}|\{\{(\w+)\}\}", value, template)


attribute_values: Any = st.one_of(
    st.text(max_size=20), st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False)
)


# The first draw of text strategies can be slow on a loaded machine; the property is cheap.
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(attributes=st.dictionaries(st.sampled_from(["first_name", "city"]), attribute_values))
def test_ses_rendering_matches_jinja_for_simple_templates(attributes: dict[str, Any]) -> None:
    compiled = compile_(
        "Hi {{ lead.attributes.first_name | default('you') }} from {{ lead.attributes.city }}",
        "<p>{{ lead.attributes.first_name }} &amp; {{ lead.email }} in {{ campaign.name }}</p>",
        "{{ lead.attributes.city | d('<nowhere>') }} {{ lead.id }} {{ lead.attributes.x.y }}",
    )
    ses = content.ses_template(compiled)
    lead = Lead(9, "x<y@example.com", attributes)
    data = content.template_data(ses, compiled, lead, CAMPAIGN)
    expected = compiled.render(lead, CAMPAIGN)
    actual = tuple(_handlebars(part, data) for part in (ses.subject, ses.html, ses.text))
    assert actual == expected
