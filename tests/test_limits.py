"""Issue 13: what a hostile visitor can ask of a deployment. Each attack, sent to the real app (demo mode) through
`gradio_client` or raw HTTP, is refused with a message that says what was wrong, and the server is unchanged:
still serving, its memory where it was. The model-layer checks behind them are tested directly too."""
import json
import shutil
import time

import httpx
import psutil
import pytest
import torch
from safetensors.torch import load_file

import model as mt5
from app.annotation.batch import load_inputs
from app.errors import UserError
from app.limits import DECODING_BOUNDS, check_bounds
from app.models import ModelPolicy
from app.settings import Settings
from model.hub import resolve_file
from model.loading import weight_files
from model.placement import PlacementError

gradio_client = pytest.importorskip("gradio_client")

import apphost  # noqa: E402
import fakehub  # noqa: E402

AppError = gradio_client.exceptions.AppError
TOKEN = "hf_owner_secret_token_0123456789"
CONTEXT = "Marie Curie was born in Warsaw in 1867 and won two Nobel prizes."


# ------------------------------------------------------------------------------------------------------------
# Servers: one open (visitors may type any id or folder), one locked; both talk to a fake Hub with HF_TOKEN set
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hub():
    fake = fakehub.start()
    yield fake
    fake.stop()


def hub_env(root, hub) -> dict:
    return {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_CACHE": str(root / "hub"),
            "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5", "MT5_STUDIO_DEMO_DIR": str(root / "demo"),
            "MT5_STUDIO_DB": str(root / "annotations.db"), "GRADIO_TEMP_DIR": str(root / "uploads")}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("limits")


@pytest.fixture(scope="module")
def open_server(root, hub):
    srv = apphost.start(root / "open.log", env=hub_env(root, hub))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def locked_server(root, hub, open_server):   # after the open one: the demo checkpoints are built by then
    env = {**hub_env(root, hub), "MT5_STUDIO_LOCKED": "1", "MT5_STUDIO_DB": str(root / "locked.db"),
           "MT5_STUDIO_ALLOWED_MODELS": "owner/listed-model,/srv/private/finetune-v3"}
    srv = apphost.start(root / "locked.log", env=env)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(open_server):
    return gradio_client.Client(open_server.url, verbose=False)


def refused(client, *args, match: str, api_name: str, **kwargs) -> str:
    with pytest.raises(AppError) as e:
        client.predict(*args, api_name=api_name, **kwargs)
    message = str(e.value)
    assert match in message, message
    assert "Something went wrong" not in message, message
    return message


def rss_mb(server) -> float:
    return psutil.Process(server.process.pid).memory_info().rss / 2**20


def still_serves(client):
    result = client.predict("A short text to summarize for the check.", max_new_tokens=4, api_name="/summarize")
    assert isinstance(result["summary"], str)


def demo_copy(root, name: str, dest: str):
    folder = root / dest
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(root / "demo" / name, folder)
    return folder


# ------------------------------------------------------------------------------------------------------------
# 2. No input reaches the model beyond its limit
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["extractive", "generative"])
def test_a_12k_character_question_is_refused_not_fed_to_the_model(client, open_server, mode):
    still_serves(client)
    before = rss_mb(open_server)
    start = time.monotonic()
    question = "Where was she born and what did she study " * 300   # ~12.6k characters
    message = refused(client, question, CONTEXT, mode=mode, match="The question is", api_name="/answer")
    assert "a question may take at most 256 of the model's 512 input tokens" in message
    assert "shorten it" in message
    assert time.monotonic() - start < 10
    assert rss_mb(open_server) - before < 300   # was ~10 GB in seconds
    still_serves(client)


def test_a_long_question_within_half_the_input_is_answered(client):
    result = client.predict("Where was she born? " * 20, CONTEXT, api_name="/answer")
    assert result["answer"]["text"]


# ------------------------------------------------------------------------------------------------------------
# 3. Decoding settings are bounded on the API as on the page
# ------------------------------------------------------------------------------------------------------------
def test_2500_beams_are_refused(client, open_server):
    before = rss_mb(open_server)
    message = refused(client, "Some text to summarize.", num_beams=2500, match="num_beams=2500 is out of range",
                      api_name="/summarize")
    assert "from 1 to 8" in message
    refused(client, "Some text <extra_id_0>.", num_beams=2500, match="num_beams=2500 is out of range",
            api_name="/fill_spans")
    refused(client, "Where?", CONTEXT, mode="generative", num_beams=2500, match="num_beams=2500 is out of range",
            api_name="/answer")
    assert rss_mb(open_server) - before < 300


def test_a_huge_length_penalty_and_other_out_of_range_settings_are_refused(client):
    refused(client, "Some text.", length_penalty=1e9, match="length_penalty=1000000000.0 is out of range",
            api_name="/summarize")
    refused(client, "Some text.", top_k=100000, match="top_k=100000 is out of range", api_name="/summarize")
    refused(client, "Some text.", max_new_tokens=10**6, match="max_new_tokens=1000000 is out of range",
            api_name="/summarize")
    refused(client, "Some text.", do_sample=True, temperature=1e-9, match="temperature=1e-09 is out of range",
            api_name="/summarize")
    refused(client, "Some text.", repetition_penalty=50.0, match="repetition_penalty=50.0 is out of range",
            api_name="/summarize")
    refused(client, "Where?", CONTEXT, top_k=10**6, match="top_k=1000000 is out of range: ask for 1 to 20",
            api_name="/answer")


def test_the_page_sliders_and_the_server_share_one_table():
    from app.tabs.common import clamp, decoding_controls
    import gradio as gr
    with gr.Blocks():
        controls = decoding_controls()
    for name, component in controls.components.items():
        if isinstance(component, gr.Slider):
            bound = DECODING_BOUNDS[name]
            assert (component.minimum, component.maximum) == (bound.low, bound.high), name
            check_bounds({name: bound.low})
            check_bounds({name: bound.high})
            with pytest.raises(UserError, match=f"{name}=.* is out of range"):
                check_bounds({name: bound.high * 10 + 1})
    assert clamp("num_beams", 16) == 8 and clamp("max_new_tokens", 1023) == 512   # a checkpoint's default
    with pytest.raises(UserError, match="out of range"):
        check_bounds({"length_penalty": float("inf")})


# ------------------------------------------------------------------------------------------------------------
# 4. Uploads are bounded and deleted; batch jobs have a row limit when locked
# ------------------------------------------------------------------------------------------------------------
def test_a_50_mb_upload_is_refused_by_the_upload_route(open_server, root):
    before = rss_mb(open_server)
    body = b"text\n" + b"a long row of text to annotate\n" * (50 * 2**20 // 31)
    start = time.monotonic()
    response = httpx.post(open_server.url + "/gradio_api/upload", files={"files": ("big.csv", body, "text/csv")},
                          timeout=60)
    assert response.status_code == 413, response.text
    assert "File size exceeded maximum allowed size of 10485760 bytes" in response.text
    assert time.monotonic() - start < 30
    stored = [p for p in (root / "uploads").rglob("*") if p.is_file() and p.stat().st_size > 2**20]
    assert stored == []   # nothing kept
    assert rss_mb(open_server) - before < 300
    small = httpx.post(open_server.url + "/gradio_api/upload", files={"files": ("ok.csv", b"text\nhello\n")})
    assert small.status_code == 200, small.text


def test_upload_and_batch_limits_are_settings():
    assert Settings.from_env({}).max_file_bytes == 10 * 2**20
    assert Settings.from_env({"MT5_STUDIO_MAX_FILE_MB": "3"}).max_file_bytes == 3 * 2**20
    assert Settings.from_env({}).batch_rows == 1000
    assert Settings.from_env({"MT5_STUDIO_LOCKED": "1"}).batch_rows == 200
    assert Settings.from_env({"MT5_STUDIO_LOCKED": "1", "MT5_STUDIO_BATCH_ROWS": "50"}).batch_rows == 50


def test_a_locked_deployment_refuses_a_batch_over_its_row_limit(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("text\n" + "".join(f"row {i}\n" for i in range(201)), encoding="utf-8")
    limit = Settings.from_env({"MT5_STUDIO_LOCKED": "1"}).batch_rows
    with pytest.raises(ValueError, match="rows.csv has 201 rows; the limit is 200 per batch: split the file"):
        load_inputs(path, max_rows=limit)
    assert len(load_inputs(path)) == 201   # unlocked: the default 1000


def test_the_app_deletes_old_uploads(open_server, root):
    from app.main import build_app, prepare
    ctx, _ = prepare(True, Settings(demo_dir=root / "demo"))   # the demo checkpoints the server built
    assert build_app(ctx).blocks.delete_cache == (3600, 3600)


# ------------------------------------------------------------------------------------------------------------
# 5. A config far larger than its weights is refused before anything is built
# ------------------------------------------------------------------------------------------------------------
def with_layers(folder, n: int):
    config = json.loads((folder / "config.json").read_text())
    config["num_layers"] = config["num_decoder_layers"] = n
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_100k_layer_config_over_a_tiny_checkpoint_is_refused_within_a_second(tmp_path):
    import os
    folder = tmp_path / "huge"
    mt5.MT5ForConditionalGeneration(mt5.MT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                                  num_heads=2)).save_pretrained(folder)
    with_layers(folder, 100_000)
    process = psutil.Process(os.getpid())
    before = process.memory_info().rss
    start = time.monotonic()
    with pytest.raises(mt5.CheckpointError, match="config.json says 100,000 encoder layer"):
        mt5.load_model(folder)
    assert time.monotonic() - start < 1.0
    assert process.memory_info().rss - before < 100 * 2**20


def test_the_app_refuses_a_100k_layer_config_within_a_second(client, open_server, root):
    folder = with_layers(demo_copy(root, "generation", "huge-config"), 100_000)
    before = rss_mb(open_server)
    start = time.monotonic()
    message = refused(client, "Some text.", model=str(folder), match="would take at least", api_name="/summarize")
    assert "more than this deployment's model memory" in message and "MT5_STUDIO_CACHE_MB" in message
    assert time.monotonic() - start < 1.5
    assert rss_mb(open_server) - before < 100
    # within the memory budget but not the weights: refused by the header check, by name
    folder = with_layers(demo_copy(root, "generation", "four-layers"), 4)
    refused(client, "Some text.", model=str(folder), match="config.json says 4 encoder layer(s) (num_layers) but "
            "the weights hold 2", api_name="/summarize")
    still_serves(client)


def test_shapes_are_checked_against_the_header(tmp_path):
    folder = tmp_path / "wide"
    mt5.MT5ForConditionalGeneration(mt5.MT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                                  num_heads=2)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_ff": 4_000_000}))
    with pytest.raises(mt5.CheckpointError, match=r"DenseReluDense.wo.weight has shape \(16, 32\) but the config"):
        mt5.load_model(folder)


def test_the_parameter_estimate_matches_a_built_model():
    config = mt5.MT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=3, num_heads=2)
    built = mt5.MT5ForConditionalGeneration(config)
    assert config.num_parameters() == sum(p.numel() for p in built.parameters())
    uconfig = mt5.UMT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=3, num_heads=2)
    assert uconfig.num_parameters() == sum(p.numel() for p in mt5.UMT5ForConditionalGeneration(uconfig).parameters())


# ------------------------------------------------------------------------------------------------------------
# 7. Shard names, revisions and subfolders stay inside the checkpoint
# ------------------------------------------------------------------------------------------------------------
def index_naming(folder, shard: str):
    keys = load_file(folder / "model.safetensors").keys()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: shard for k in keys}}))
    (folder / "model.safetensors").unlink()
    return folder


@pytest.mark.parametrize("shard", ["../../x", "/etc/passwd"])
def test_an_index_naming_a_file_outside_the_checkpoint_is_refused(client, root, shard):
    outside = root / "x"
    outside.write_bytes(b"not weights")
    folder = index_naming(demo_copy(root, "generation", "escape"), shard)
    with pytest.raises(mt5.CheckpointError, match="points outside the checkpoint's folder"):
        weight_files(folder)
    refused(client, "Some text.", model=str(folder), match=f"the file name {shard!r} points outside the checkpoint",
            api_name="/summarize")


@pytest.mark.parametrize("name, what", [("../../x", "file name"), ("/abs/model.safetensors", "file name"),
                                         ("sub/../../x", "file name"), ("C:/x", "file name"),
                                         ("..\\x", "file name")])
def test_resolve_file_refuses_names_that_leave_the_folder(tmp_path, name, what):
    with pytest.raises(mt5.CheckpointError, match=f"the {what} .* points outside"):
        resolve_file(tmp_path, name)


def test_revisions_and_subfolders_that_leave_the_cache_are_refused(tmp_path):
    with pytest.raises(mt5.CheckpointError, match="the revision '../../etc' points outside"):
        resolve_file("owner/name", "config.json", revision="../../etc")
    with pytest.raises(mt5.CheckpointError, match="the subfolder '/etc' points outside"):
        resolve_file(tmp_path, "config.json", subfolder="/etc")
    (tmp_path / "config.json").write_text("{}")
    assert resolve_file(tmp_path, "config.json") == tmp_path / "config.json"


# ------------------------------------------------------------------------------------------------------------
# 6. HF_TOKEN goes only with the deployment's own ids
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["/summarize", "/classify"])   # /classify first reads config.json for its head
def test_a_visitor_typed_private_id_is_fetched_without_the_token(client, hub, endpoint):
    repo = f"owner/private-model{endpoint.replace('/', '-')}"
    with pytest.raises(AppError):
        client.predict("Some text.", model=repo, api_name=endpoint)
    sent = hub.seen(repo)
    assert sent, "the fake Hub was never asked: HF_ENDPOINT not honoured?"
    assert all(auth is None for auth in sent), sent


def test_a_listed_id_is_fetched_with_the_token(locked_server, hub):
    locked = gradio_client.Client(locked_server.url, verbose=False)
    with pytest.raises(AppError):
        locked.predict("Some text.", model="owner/listed-model", api_name="/summarize")
    sent = hub.seen("owner/listed-model")
    assert sent and all(auth == f"Bearer {TOKEN}" for auth in sent), sent


def test_policy_token_decision():
    policy = ModelPolicy(False, frozenset({"google/mt5-small"}))
    assert policy.token("google/mt5-small") is None and policy.token("someone/else") is False


# ------------------------------------------------------------------------------------------------------------
# 10. The lock's refusal lists public ids only
# ------------------------------------------------------------------------------------------------------------
def test_the_lock_refusal_lists_public_ids_only(locked_server):
    locked = gradio_client.Client(locked_server.url, verbose=False)
    message = refused(locked, "Some text.", model="someone/other", match="only serves its listed models",
                      api_name="/summarize")
    assert "owner/listed-model" in message and "demo/generation" in message
    assert "/srv/private" not in message and "finetune-v3" not in message
    assert "(and 1 local checkpoint of this server)" in message


# ------------------------------------------------------------------------------------------------------------
# 8. Devices are validated before anything is loaded
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["meta", "cuda", "foo"])
def test_unusable_devices_are_refused_through_the_api(client, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    message = refused(client, "Some text.", device=device, match=f"Unknown or unusable device {device!r}",
                      api_name="/summarize")
    assert "use one of auto, cpu" in message
    still_serves(client)


@pytest.mark.parametrize("device, match", [("meta", "keeps no weight in memory"), ("disk", "keeps no weight"),
                                           ("foo", "unknown device 'foo': available here are cpu"),
                                           ("cuda:x", "unknown device 'cuda:x'")])
def test_from_pretrained_refuses_unusable_devices_before_loading(tmp_path, device, match):
    folder = tmp_path / "ckpt"
    mt5.MT5ForConditionalGeneration(mt5.MT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                                  num_heads=2)).save_pretrained(folder)
    with pytest.raises(PlacementError, match=match):
        mt5.load_model(folder, device_map=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_on_a_cpu_machine_names_the_available_devices(tmp_path):
    folder = tmp_path / "ckpt"
    mt5.MT5ForConditionalGeneration(mt5.MT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2,
                                                  num_heads=2)).save_pretrained(folder)
    with pytest.raises(PlacementError, match="no CUDA GPU is available here: use one of cpu"):
        mt5.load_model(folder, device_map="cuda")


# ------------------------------------------------------------------------------------------------------------
# 4 (cont.). The Batch tab: its row limit when locked, and its Stop button (the tab's handlers, called as its page
# calls them: they are private, no API reaches them)
# ------------------------------------------------------------------------------------------------------------
def batch_page(root, tmp_path, monkeypatch, user=None, **env):
    """The store, the Batch tab's create and stop handlers as `user` calls them (one StopRequests, as one page
    has), and the app's context, on a deployment set by `env`."""
    import functools
    from types import SimpleNamespace
    from app.annotation.batch import StopRequests
    from app.annotation.rights import identify
    from app.annotation.store import AnnotationStore
    from app.annotation.tabs import batch_tab
    from app.main import prepare
    monkeypatch.setenv("MT5_STUDIO_DB", str(tmp_path / "annotations.db"))
    store = AnnotationStore()
    ctx, _ = prepare(True, Settings.from_env({"MT5_STUDIO_DEMO_DIR": str(root / "demo"), **env}))
    ident, stops = identify(SimpleNamespace(username=user), ctx.settings), StopRequests()
    fns = {"create_and_run": functools.partial(batch_tab.create_and_run, store, ident, ctx=ctx, stops=stops),
           "stop_it": functools.partial(batch_tab.stop_it, store, ident, stops=stops)}
    return store, fns, ctx


DECODING = [8, 1, 0, 1.0, False, 1.0, 50, 1.0, 1.0, 0]   # decoding_controls() order, max_new_tokens=8


def test_a_locked_batch_tab_refuses_a_file_over_its_row_limit(open_server, root, tmp_path, monkeypatch):
    from app.annotation.batch import list_jobs
    # locked: only an admin creates jobs (app/annotation/rights.py), and the limit holds for them too
    store, fns, ctx = batch_page(root, tmp_path, monkeypatch, "root", MT5_STUDIO_LOCKED="1",
                                 MT5_STUDIO_USERS="root:pw", MT5_STUDIO_ADMINS="root")
    rows = tmp_path / "rows.csv"
    rows.write_text("text\n" + "".join(f"row {i}\n" for i in range(201)), encoding="utf-8")
    out = fns["create_and_run"](str(rows), "summarization", ctx.assets.models["summarization"].default, "auto",
                                "cpu", "none", *DECODING)
    assert "No job created: rows.csv has 201 rows; the limit is 200 per batch" in "".join(map(str, out.values()))
    assert list_jobs(store) == []


def test_a_running_batch_job_stops_on_request(open_server, root, tmp_path, monkeypatch):
    import threading
    from app.annotation.batch import job_progress, list_jobs
    store, fns, ctx = batch_page(root, tmp_path, monkeypatch)
    rows = tmp_path / "rows.csv"
    rows.write_text("text\n" + "".join(f"Row {i} of a long batch to summarize.\n" for i in range(400)),
                    encoding="utf-8")
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=fns["create_and_run"](
        str(rows), "summarization", ctx.assets.models["summarization"].default, "auto", "cpu", "none", *DECODING)))
    worker.start()
    deadline = time.monotonic() + 60
    started = lambda: list_jobs(store) and job_progress(store, list_jobs(store)[0].id).processed
    while time.monotonic() < deadline and not started():
        time.sleep(0.05)
    (job,) = list_jobs(store)
    asked = fns["stop_it"](None)   # no job picked: the only one running
    assert "Stopping before the next row" in "".join(map(str, asked.values()))
    worker.join(60)
    assert not worker.is_alive()
    assert "Stopped on request" in "".join(map(str, result["out"].values()))
    done = job_progress(store, job.id).processed
    assert 0 < done < 400
    assert "That job is not running" in "".join(map(str, fns["stop_it"](job.id).values()))
