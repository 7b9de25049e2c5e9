import pytest
import yaml

from factory.errors import SpecError
from factory.spec import load_spec, parse_spec, template
from tests.conftest import news_spec


def test_template_is_valid_and_commented():
    text = template("reviews")
    assert "#" in text
    spec = parse_spec(yaml.safe_load(text))
    assert spec.name == "reviews" and spec.class_names == ["positive", "negative"]


def test_unknown_and_missing_fields_are_named():
    data = news_spec()
    data["colour"] = "blue"
    del data["license"]
    with pytest.raises(SpecError) as e:
        parse_spec(data, "datasets/news.yaml")
    msg = str(e.value)
    assert "datasets/news.yaml" in msg
    assert "field 'colour': unknown field" in msg
    assert "field 'license': required field is missing" in msg


def test_nested_field_errors_name_the_path():
    data = news_spec(quality={"audit_rate": 1.5})
    with pytest.raises(SpecError, match=r"field 'quality.audit_rate'"):
        parse_spec(data)


def test_duplicate_classes_and_bad_priors_are_refused():
    data = news_spec()
    data["classes"] = [{"name": "a", "definition": "x"}, {"name": "a", "definition": "y"}]
    with pytest.raises(SpecError, match="duplicate class names"):
        parse_spec(data)
    data["classes"] = [{"name": "a", "definition": "x", "prior": 0.9}, {"name": "b", "definition": "y", "prior": 0.5}]
    with pytest.raises(SpecError, match="priors sum to 1.400"):
        parse_spec(data)


def test_reserved_task_types_are_in_the_schema_but_refused_for_now(monkeypatch):
    from factory import tasks
    from factory.tasks.spans import Spans

    class NotYet(Spans):  # a registered type whose batch pipeline is not built
        pipeline_ready = False

    monkeypatch.setitem(tasks._REGISTRY, "spans", NotYet())
    with pytest.raises(SpecError, match="batch pipeline does not run it yet"):
        parse_spec(news_spec(task={"type": "spans", "input": "text"}))
    with pytest.raises(SpecError, match="reserved in the schema but not implemented"):
        parse_spec(news_spec(task={"type": "boxes", "input": "text"}))


def test_editing_the_spec_changes_its_version(tmp_path):
    p = tmp_path / "news.yaml"
    p.write_text(yaml.safe_dump(news_spec()))
    v1 = load_spec(p).version
    assert load_spec(p).version == v1
    p.write_text(yaml.safe_dump(news_spec(guideline={"version": "1.1"})))
    assert load_spec(p).version != v1


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")


def test_id_column_is_optional_own_column_and_leaves_existing_versions_alone():
    plain = parse_spec(news_spec())
    assert plain.task.id_column is None
    assert "id_column" not in plain.model_dump(mode="json", by_alias=True)["task"]  # old specs keep their version
    task = {"type": "classification", "input": "text", "metadata": ["source_file"], "id_column": "review_id"}
    spec = parse_spec(news_spec(task=task))
    assert spec.task.id_column == "review_id" and spec.version != plain.version
    for bad in ("text", "source_file", "item_id", ""):
        with pytest.raises(SpecError, match="task.id_column|task"):
            parse_spec(news_spec(task=dict(task, id_column=bad)))
