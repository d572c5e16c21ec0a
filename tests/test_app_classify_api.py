"""/classify through the real app (demo mode, `gradio_client`): rank classification over typed labels with a
text-to-text checkpoint, the NLI preset, the head path of a classification checkpoint, and bad input."""
import pytest

gradio_client = pytest.importorskip("gradio_client")

from model.tiny import DEMO_CLASS_LABELS  # noqa: E402


@pytest.fixture(scope="module")
def client(demo_client):
    return demo_client  # the session's demo server (tests/conftest.py)


def test_classify_takes_labels_template_and_normalize(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/classify"]
    names = [p["parameter_name"] for p in api["parameters"]]
    assert names[:5] == ["text", "model", "dtype", "device", "quantization"]   # the old ones, in their places
    assert {"labels", "template", "normalize", "preset", "hypothesis"} <= set(names)


def test_rank_classification_over_typed_labels(client):
    result = client.predict("The match ended 3-1 after extra time.", labels="Sports, Politics, Cooking",
                            template="{text}\nWhat is this text about? Options: {choices}", api_name="/classify")
    assert result["method"] == "rank classification" and result["model"]["source"] == "demo/generation"
    assert set(result["probabilities"]) == {"Sports", "Politics", "Cooking"}
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-6
    assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
    assert set(result["scores"]) == set(result["probabilities"]) and result["normalized"] is False
    assert result["prompt"].endswith("Options: Sports, Politics, Cooking")
    per_token = client.predict("The match ended 3-1 after extra time.", labels="Sports, Politics, Cooking",
                               template="{text}\nWhat is this text about? Options: {choices}", normalize=True,
                               api_name="/classify")
    assert per_token["normalized"] is True and per_token["scores"] != result["scores"]


def test_presets_fill_in_labels_and_template(client):
    sentiment = client.predict("I loved it.", api_name="/classify")
    assert set(sentiment["probabilities"]) == {"positive", "neutral", "negative"}
    nli = client.predict("A man is sleeping.", preset="nli", hypothesis="He is awake.", api_name="/classify")
    assert set(nli["probabilities"]) == {"yes", "maybe", "no"} and '"He is awake."' in nli["prompt"]


def test_a_classification_head_checkpoint_uses_its_head(client):
    result = client.predict("I loved it.", model="demo/classification", labels="a, b", api_name="/classify")
    assert result["method"] == "classification head" and set(result["probabilities"]) == set(DEMO_CLASS_LABELS)
    assert result["model"]["head"] == "classification"


@pytest.mark.parametrize("kwargs,message", [
    (dict(labels="only"), "Only one label ('only')"),
    (dict(labels=", ".join(f"l{i}" for i in range(200))), "200 labels given; at most 100"),
    (dict(labels="a, b, a"), "The label 'a' is given more than once"),
    (dict(template="Is it good? {choices}"), "The prompt template has no {text} placeholder"),
    (dict(preset="nli", template="{premise}? {choices}"), "has no {hypothesis} placeholder"),
    (dict(preset="emotions"), "Unknown preset 'emotions'"),
])
def test_bad_input_gets_a_clear_message(client, kwargs, message):
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        client.predict("Some text.", hypothesis="h", api_name="/classify", **kwargs)
    assert message in str(e.value)
