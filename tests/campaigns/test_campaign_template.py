"""Campaign templates: sandbox, strict merge fields naming the row, HTML escaping, loading."""

from __future__ import annotations

import pytest
from jinja2.exceptions import SecurityError, UndefinedError

from pipeline.campaigns.template import CampaignTemplate, TemplateLoadError, TemplateRenderError

ROW = {"email": "ann@customer.example", "first_name": "Ann", "note": "<b>R&D</b>"}


def render(source: str, fields=ROW, **kwargs):
    return CampaignTemplate(source, "body").render(fields, row=7, email="ann@customer.example", **kwargs)


def test_merge_fields_subject_text_and_escaped_html():
    template = CampaignTemplate("Hi {{ first_name }}\n  and {{ note }}", "Hello {{ first_name }}, {{ note }}\n",
                                '<p>{{ first_name }}: {{ note }}</p><a href="{{ unsubscribe_url }}">x</a>')
    mail = template.render(ROW, row=2, email=ROW["email"], unsubscribe_url="https://t.example/u/T?a=1&b=2")
    assert mail.subject == "Hi Ann and <b>R&D</b>"  # one line, not escaped
    assert mail.text == "Hello Ann, <b>R&D</b>\n"
    assert mail.html == ('<p>Ann: &lt;b&gt;R&amp;D&lt;/b&gt;</p>'
                         '<a href="https://t.example/u/T?a=1&amp;b=2">x</a>')


@pytest.mark.parametrize("source", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ recipient.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ first_name.__len__() }}",
    "{{ recipient.update({'x': 1}) }}",   # immutable sandbox: no changes to the row
])
def test_sandbox_refuses_internals(source):
    with pytest.raises(TemplateRenderError) as caught:
        render(source)
    assert isinstance(caught.value.__cause__, SecurityError)
    assert "row 7 (ann@customer.example)" in str(caught.value)


def test_missing_field_is_an_error_naming_the_row():
    with pytest.raises(TemplateRenderError, match=r"row 7 \(ann@customer\.example\), subject: 'last_name' is undefined") as caught:
        render("Dear {{ last_name }}")
    assert isinstance(caught.value.__cause__, UndefinedError)
    assert caught.value.row == 7
    # Tests on absent fields are allowed, as is a default.
    assert render("{% if last_name is defined %}x{% else %}y{% endif %} {{ last_name | default('z') }}").subject == "y z"


def test_columns_that_are_not_identifiers_and_arithmetic_errors():
    assert render('{{ recipient["first name"] }}', {"first name": "Ann"}).subject == "Ann"
    with pytest.raises(TemplateRenderError, match="ZeroDivisionError"):
        render("{{ 1 / 0 }}")
    with pytest.raises(TemplateRenderError, match="renders empty"):
        render("{{ '' }}")


def test_no_other_files_can_be_loaded():
    with pytest.raises(TemplateRenderError):
        render("{% include '/etc/passwd' %}")


def test_load_toml_and_folder(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text('subject = "Hi {{ first_name }}"\ntext = """Hello {{ first_name }}\n"""\n')
    assert CampaignTemplate.load(toml).render(ROW).text == "Hello Ann\n"
    folder = tmp_path / "tpl"
    folder.mkdir()
    (folder / "subject.txt").write_text("Offers for {{ first_name }}\n")
    (folder / "body.html").write_text("<p>{{ note }}</p>\n")
    mail = CampaignTemplate.load(folder).render(ROW)
    assert (mail.subject, mail.text, mail.html) == ("Offers for Ann", None, "<p>&lt;b&gt;R&amp;D&lt;/b&gt;</p>\n")


@pytest.mark.parametrize("content, message", [
    ('subject = "x"\n', "text body, an HTML body"),
    ('text = "x"\n', "subject is missing"),
    ('subject = "x"\ntext = "y"\nbcc = "z"\n', "unknown keys bcc"),
    ('subject = "{{ x"\ntext = "y"\n', "subject"),
    ('subject = "x"\ntext = "{% for %}"\n', "text line 1"),
    ("subject = [\n", "not valid TOML"),
])
def test_bad_templates_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(TemplateLoadError, match=message):
        CampaignTemplate.load(path)


def test_missing_template_and_folder_without_subject(tmp_path):
    with pytest.raises(TemplateLoadError, match="no such template"):
        CampaignTemplate.load(tmp_path / "nope.toml")
    with pytest.raises(TemplateLoadError, match="no subject.txt"):
        CampaignTemplate.load(tmp_path)
