"""The real app, launched on localhost in demo mode, driven through `gradio_client`: every endpoint, bad input,
and 20 concurrent requests."""
import json
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

gradio_client = pytest.importorskip("gradio_client")

import apphost as server  # noqa: E402
from app.assets import load_assets  # noqa: E402
from model.tiny import DEMO_CLASS_LABELS, DEMO_TAG_LABELS  # noqa: E402

EX = load_assets().examples
NON_T5_REPO = "google-bert/bert-base-uncased"
ENDPOINTS = {"/summarize", "/translate", "/fill_spans", "/classify", "/tag", "/answer", "/attention", "/explain",
             "/score"}


def fake_hub_cache(root):
    """A Hugging Face cache holding only the config.json of a BERT repo, as if it had been downloaded."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + NON_T5_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    return root


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    env = {"MT5_STUDIO_DEMO_DIR": str(root / "demo"), "HF_HUB_CACHE": str(fake_hub_cache(root / "hub")),
           "MT5_STUDIO_CONCURRENCY": "4", "MT5_STUDIO_DB": str(root / "annotations.db")}
    srv = server.start(root / "server.log", env=env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(app_server):
    return gradio_client.Client(app_server.url, verbose=False)


@pytest.fixture(scope="module")
def demo_dir(app_server, tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "app0" / "demo"


def test_every_endpoint_is_named_and_takes_its_text_first(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert ENDPOINTS <= set(api)
    assert api["/summarize"]["parameters"][0]["parameter_name"] == "text"
    assert [p["parameter_name"] for p in api["/answer"]["parameters"][:2]] == ["question", "context"]
    for name in ENDPOINTS:
        assert all(p["parameter_has_default"] for p in api[name]["parameters"][2:]), name


def test_summarize(client):
    result = client.predict(EX["summarization"][3]["text"], max_new_tokens=10, api_name="/summarize")
    assert isinstance(result["summary"], str) and result["settings"]["max_new_tokens"] == 10
    assert result["input_tokens"] > 10 and result["truncated"] is False
    assert result["model"]["family"] == "mt5" and result["model"]["head"] == "generation"


def test_translate_names_the_language_by_its_token(client):
    row = EX["translation"][6]
    result = client.predict(row["text"], "Swahili", max_new_tokens=6, api_name="/translate")
    assert (result["target"], result["code"], result["method"]) == ("Swahili", "sw", "<2sw> token")
    assert result["prompt"] == f"<2sw> {row['text']}" and isinstance(result["translation"], str)
    assert result["model"]["family"] == "t5" and result["model"]["quantization"] == "none"
    assert result["settings"]["max_new_tokens"] == 6
    assert "Unknown target language 'Klingon'" in error_of(client, "Hello", "Klingon", api_name="/translate")
    assert "empty" in error_of(client, " ", "English", api_name="/translate")


def test_fill_spans_returns_each_marker_with_its_sentinel(client):
    text = EX["span_filling"][3]["text"]
    result = client.predict(text, api_name="/fill_spans")
    assert [s["marker"] for s in result["spans"]] == ["<extra_id_0>", "<extra_id_1>"]
    assert all(isinstance(s["sentinel_id"], int) for s in result["spans"])
    assert len({s["sentinel_id"] for s in result["spans"]}) == 2
    for span in result["spans"]:
        assert result["text"][span["start"]: span["end"]] == span["text"]
    assert "<extra_id_" in result["raw"]


def test_classify(client):
    result = client.predict(EX["classification"][0]["text"], api_name="/classify")
    assert list(result["probabilities"]) and set(result["probabilities"]) == set(DEMO_CLASS_LABELS)
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-4 and result["label"] in DEMO_CLASS_LABELS


@pytest.mark.parametrize("row", EX["tagging"], ids=[r["lang"] for r in EX["tagging"]])
def test_tag_offsets_lie_inside_the_input(client, row):
    text = row["text"]
    result = client.predict(text, api_name="/tag")
    assert result["words"] and result["rtl"] == (row["lang"] == "ar")
    for item in result["entities"] + result["words"]:
        assert 0 <= item["start"] < item["end"] <= len(text)
        assert text[item["start"]: item["end"]] == item["text"]
    assert {e["label"] for e in result["entities"]} <= {label[2:] for label in DEMO_TAG_LABELS if label != "O"}


def test_answer_extractive_and_generative(client):
    row = EX["question_answering"][2]
    result = client.predict(row["question"], row["context"], top_k=3, api_name="/answer")
    answer = result["answer"]
    assert row["context"][answer["start"]: answer["end"]] == answer["text"] and 0 < answer["score"] <= 1
    assert len(result["alternatives"]) == 2
    generated = client.predict(row["question"], row["context"], mode="generative", max_new_tokens=6,
                               api_name="/answer")
    assert generated["mode"] == "generative" and isinstance(generated["answer"]["text"], str)


@pytest.mark.parametrize("task,kind,args", [
    ("summarization", "cross", {}),
    ("translation", "cross", {"text": "Angela Merkel met Emmanuel Macron in Berlin."}),
    ("span_filling", "decoder", {}),
    ("tagging", "encoder", {}),
    ("classification", "cross", {}),
    ("question_answering", "encoder", {"question": "Where?"}),
])
def test_attention(client, task, kind, args):
    args = dict(args)
    result = client.predict(args.pop("text", "Angela Merkel met <extra_id_0> in Berlin."), task=task, kind=kind,
                            layer=-1, head="0", api_name="/attention", **args)
    weights = result["weights"]
    assert result["kind"] == kind and result["head"] == "0" and result["layer"] == result["num_layers"] - 1
    assert len(weights) == len(result["queries"]) and all(len(r) == len(result["keys"]) for r in weights)
    assert all(abs(sum(r) - 1) < 1e-3 for r in weights)


def test_explain_a_generated_word_and_why_not_another(client):
    text = EX["summarization"][0]["text"]
    result = client.predict(text, method="alti_plus", position=1, api_name="/explain")
    assert result["output"] and len(result["source"]) == len(result["source_pieces"])
    assert len(result["source_share"]) == len(result["target_pieces"]) and result["position"] == 1
    why = client.predict(text, output=result["output"], method="contrastive", position=0, alternative="Kenya",
                         api_name="/explain")
    assert why["contrast"]["difference"] == pytest.approx(why["contrast"]["produced_logprob"]
                                                          - why["contrast"]["alternative_logprob"])
    assert "does not exist" in error_of(client, text, output="a b", method="saliency", position=40,
                                        api_name="/explain")


def error_of(client, *args, api_name, **kwargs) -> str:
    with pytest.raises(gradio_client.exceptions.AppError) as e:
        client.predict(*args, api_name=api_name, **kwargs)
    return str(e.value)


def test_bad_input_gets_a_clear_message_and_the_app_keeps_serving(client, app_server, tmp_path, demo_dir):
    assert "empty" in error_of(client, "", api_name="/summarize")
    assert "no <extra_id_N> marker" in error_of(client, "no markers at all", api_name="/fill_spans")
    assert "no context" in error_of(client, "Where?", "", api_name="/answer")
    assert "Could not find the checkpoint 'nobody/no-such-model'" in error_of(
        client, "text", model="nobody/no-such-model", api_name="/classify")
    assert "not an mT5/UMT5 model" in error_of(client, "text", model=NON_T5_REPO, api_name="/summarize")
    assert "this checkpoint has no language-model head" in error_of(   # neither a head nor text-to-text
        client, "text", model=str(demo_dir / "question-answering"), api_name="/classify")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in (demo_dir / "token-classification").iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert "damaged or incomplete" in error_of(client, "text", model=str(corrupt), api_name="/tag")
    start = time.perf_counter()
    long = client.predict("word " * 40_000, max_new_tokens=4, api_name="/summarize")   # 200k characters
    assert long["truncated"] and time.perf_counter() - start < 30
    assert app_server.process.poll() is None
    assert client.predict("Hello again", api_name="/classify")["label"] in DEMO_CLASS_LABELS


def test_twenty_concurrent_requests_all_complete_with_bounded_memory(client, app_server):
    calls = [((EX["summarization"][i % 8]["text"],), {"max_new_tokens": 8}, "/summarize") for i in range(6)]
    calls += [((EX["span_filling"][i % 7]["text"],), {}, "/fill_spans") for i in range(4)]
    calls += [((EX["classification"][i % 7]["text"],), {}, "/classify") for i in range(4)]
    calls += [((EX["tagging"][i % 7]["text"],), {}, "/tag") for i in range(3)]
    calls += [((q["question"], q["context"]), {}, "/answer") for q in EX["question_answering"][:3]]
    assert len(calls) == 20
    process = psutil.Process(app_server.process.pid)
    client.predict("warm up", api_name="/classify")
    before = process.memory_info().rss
    start = time.perf_counter()
    jobs = [client.submit(*args, api_name=name, **kwargs) for args, kwargs, name in calls]
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda job: job.result(timeout=90), jobs))
    elapsed = time.perf_counter() - start
    assert len(results) == 20 and all(isinstance(r, dict) for r in results)
    grown = process.memory_info().rss - before
    assert grown < 300 * 2**20, f"the server grew by {grown / 2**20:.0f} MB over 20 requests"
    assert elapsed < 90


def test_the_page_streams_the_summary(client, demo_dir):
    """The page's own event (undocumented endpoint /summarize_stream) sends the summary in growing pieces."""
    settings = [16, 1, 0, 1.0, False, 1.0, 50, 1.0, 1.0, -1]   # the decoding controls, in page order
    job = client.submit(str(demo_dir / "generation"), "auto", "auto", "none", EX["summarization"][0]["text"],
                        *settings, api_name="/summarize_stream")
    job.result(timeout=60)
    texts = [out[0]["value"] for out in job.outputs() if isinstance(out[0], dict) and out[0].get("value")]
    assert len(texts) >= 2 and all(b.startswith(a) for a, b in zip(texts, texts[1:]))


def mcp_session(url: str, calls):
    """Runs `calls(session)` in an MCP client session over streamable HTTP (the `mcp` package's own client)."""
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def go():
        async with streamable_http_client(url.rstrip("/") + "/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await calls(session)
    return asyncio.run(go())


def test_the_endpoints_are_mcp_tools(app_server):
    import sacrebleu

    hyps, refs = ["The cat sat on the mat.", "It rained."], ["The cat sat on a mat.", "It rained all day."]

    async def calls(session):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        scored = await session.call_tool("score", {"hypotheses": "\n".join(hyps), "references": "\n".join(refs),
                                                   "metrics": "chrf"})
        translated = await session.call_tool("translate", {"text": "Habari ya asubuhi", "target": "German",
                                                           "max_new_tokens": 4})
        return tools, scored, translated

    tools, scored, translated = mcp_session(app_server.url, calls)
    assert {"summarize", "translate", "classify_text", "tag_text", "answer", "score"} <= set(tools), sorted(tools)
    assert "95% bootstrap intervals" in tools["score"].description
    assert "target" in tools["translate"].inputSchema["properties"]
    assert not scored.isError and not translated.isError
    text = "".join(part.text for part in scored.content if part.type == "text")
    corpus = sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score
    assert f"{corpus:.4f}"[:6] in text
    assert "<2de> token" in "".join(part.text for part in translated.content if part.type == "text")
