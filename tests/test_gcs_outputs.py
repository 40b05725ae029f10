"""Output zips through the production storage, a prefect-gcp GcsBucket, into a real emulator.

Real parts: `gcp-storage-emulator` as its own process, a GcsBucket block with a
service-account GcpCredentials saved on the test Prefect server and named by
CS_OUTPUTS_BLOCK, google-cloud-storage sending real HTTP (pointed at the emulator
by its own STORAGE_EMULATOR_HOST), a token endpoint that checks the key's
signature, and the simulate flow with the misbehaving sample app. The zips are
read back from the emulator over its JSON API, not through the code under test.
"""

from __future__ import annotations

import base64
import io
import shutil
import uuid
import zipfile
from types import SimpleNamespace

import pytest
from prefect_cs.core.errors import OutputsNotStored
from prefect_cs.flows.outputs import build_zips
from prefect_cs.flows.simulate import simulate
from prefect_cs.flows.storage import store_zips
from prefect_cs.testing.gcs_emulator import GcsEmulator, TokenStandIn, new_service_account
from prefect_cs.testing.scratch import free_port

BLOCK = "cs-test-gcs-outputs"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
OUTPUTS = {
    "renderable": [
        {"media_type": "Markdown", "title": "Summary", "data": "# Total\n\n42"},
        {"media_type": "bokeh", "title": "plot", "data": {"x": [1, 2], "y": [3, 4]}},
        {"media_type": "PNG", "title": "chart", "data": base64.b64encode(PNG).decode()},
    ],
    "downloadable": [
        {"media_type": "CSV", "title": "table", "data": "a,b\n1,2\n"},
        {"media_type": "CSV", "title": "table", "data": "a,b\n3,4\n"},
        {"media_type": "Text", "title": "", "data": "untitled"},
    ],
}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """The emulator and the token endpoint for this module, with one service account."""
    token = TokenStandIn().start()
    info, public_key = new_service_account(f"{token.url}/token")
    token.public_key = public_key
    with GcsEmulator(tmp_path_factory.mktemp("gcs")) as emulator:
        yield SimpleNamespace(emulator=emulator, token=token, info=info)
    token.stop()


def use_bucket(gcs, bucket: str, monkeypatch, endpoint: str | None = None) -> str:
    """Save a GcsBucket block for `bucket` and make it the outputs storage, as an operator would."""
    from prefect_gcp import GcpCredentials
    from prefect_gcp.cloud_storage import GcsBucket

    GcsBucket(bucket=bucket, gcp_credentials=GcpCredentials(service_account_info=gcs.info)).save(
        BLOCK, overwrite=True
    )
    monkeypatch.setenv("CS_OUTPUTS_BLOCK", f"gcs-bucket/{BLOCK}")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint or gcs.emulator.url)
    return bucket


@pytest.fixture
def bucket(gcs, platform, monkeypatch) -> str:
    """A new, empty bucket in the emulator, set as the outputs storage."""
    return use_bucket(
        gcs, gcs.emulator.create_bucket(f"cs-outputs-{uuid.uuid4().hex[:12]}"), monkeypatch
    )


def read_zip(gcs, bucket: str, name: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(gcs.emulator.read(bucket, name)))


def assert_cs_storage_layout(gcs, bucket: str, task_id: str, description: dict) -> None:
    """The checks tests/test_simulate.py makes on the local folder, on the bucket instead:
    `<task_id>_<category>.zip` at the bucket's root (where cs-storage writes and the web app
    reads), one member per output, named as the description says."""
    names = {f"{task_id}_{c}.zip" for c in ("renderable", "downloadable")}
    assert names <= set(gcs.emulator.object_names(bucket))
    for category in ("renderable", "downloadable"):
        info = description[category]
        assert info["ziplocation"] == f"{task_id}_{category}.zip"
        with read_zip(gcs, bucket, info["ziplocation"]) as archive:
            assert sorted(archive.namelist()) == sorted(o["filename"] for o in info["outputs"])
        for output in info["outputs"]:
            assert set(output) == {"id", "title", "media_type", "filename"}
            uuid.UUID(output["id"])


# ---- the storing step ------------------------------------------------------------------------


def test_store_zips_writes_the_cs_storage_layout_to_the_bucket(gcs, bucket):
    task_id = str(uuid.uuid4())
    description, zips = build_zips(task_id, OUTPUTS)
    where = store_zips(zips)
    assert gcs.emulator.object_names(bucket) == sorted(zips)  # at the root, nothing else
    assert set(where) == set(zips)
    for location, content in zips.items():
        assert gcs.emulator.read(bucket, location) == content
    assert_cs_storage_layout(gcs, bucket, task_id, description)
    with read_zip(gcs, bucket, f"{task_id}_renderable.zip") as archive:
        assert archive.read("chart.png") == PNG
        assert archive.read("Summary.md") == b"# Total\n\n42"
    with read_zip(gcs, bucket, f"{task_id}_downloadable.zip") as archive:
        assert archive.read("table (2).csv") == b"a,b\n3,4\n"
        assert archive.read("output-3.txt") == b"untitled"
    tokens = [r for r in gcs.token.requests if r.status is not None]
    assert tokens and all(r.status == 200 for r in tokens)  # the key's signed grant was used


# ---- a simulation ---------------------------------------------------------------------------


def run_ok() -> tuple[str, object]:
    task_id = str(uuid.uuid4())
    adjustment = {"control": {"behavior": [{"value": "ok"}]}}
    return task_id, simulate("tests", "Misbehaving", task_id, {}, adjustment, return_state=True)


def test_a_simulation_stores_its_zips_in_the_bucket(misbehaving, webapp, cs_home, gcs, bucket):
    task_id, state = run_ok()
    assert state.is_completed(), state.message
    body = webapp.only_put(task_id)
    assert body["status"] == "SUCCESS"
    assert_cs_storage_layout(gcs, bucket, task_id, body["outputs"])
    assert all(body["outputs"][c]["outputs"] for c in ("renderable", "downloadable"))
    assert not list((cs_home / "outputs").glob(f"{task_id}_*"))  # not the local folder


# ---- storage that fails: one FAIL that names the problem and the fix -------------------------


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_a_simulations_thumbnails_go_to_the_bucket(
    misbehaving, webapp, cs_home, gcs, bucket, monkeypatch
):
    """`<output id>.png` beside the zips at the bucket's root, where C/S 1.6 reads it."""
    monkeypatch.setenv("CS_LIMITS_THUMBNAIL_COUNT", "20")
    task_id, state = run_ok()
    assert state.is_completed(), state.message
    (output,) = webapp.only_put(task_id)["outputs"]["renderable"]["outputs"]
    png = gcs.emulator.read(bucket, f"{output['id']}.png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert not list((cs_home / "outputs").glob(f"{output['id']}.png"))  # not the local folder


def fail_of_a_simulation(webapp) -> str:
    """Run one simulation; its result still reaches the web app, once, as a FAIL."""
    task_id, state = run_ok()
    assert state.is_failed()
    body = webapp.only_put(task_id)
    assert body["status"] == "FAIL"
    return body["traceback"]


def test_a_missing_bucket_is_one_fail_naming_the_bucket_and_the_fix(
    misbehaving, webapp, gcs, platform, monkeypatch
):
    use_bucket(gcs, "cs-no-such-bucket", monkeypatch)
    with pytest.raises(OutputsNotStored) as raised:
        store_zips({"x_renderable.zip": b"PK"})
    message = str(raised.value)
    assert "GCS bucket 'cs-no-such-bucket'" in message and "does not exist" in message
    assert "gcloud storage buckets create gs://cs-no-such-bucket" in message
    assert f"gcs-bucket/{BLOCK}" in message and "CS_OUTPUTS_BLOCK" in message
    traceback = fail_of_a_simulation(webapp)
    assert "OutputsNotStored" in traceback and "gcloud storage buckets create" in traceback


def test_refused_credentials_are_one_fail_naming_the_credentials(
    misbehaving, webapp, gcs, bucket, monkeypatch
):
    monkeypatch.setattr(gcs.token, "refuse", True)
    with pytest.raises(OutputsNotStored, match="credentials were refused.*roles/storage"):
        store_zips({"x_renderable.zip": b"PK"})
    assert "credentials were refused" in fail_of_a_simulation(webapp)
    assert gcs.emulator.object_names(bucket) == []


def test_storage_that_does_not_answer_is_one_fail_naming_the_route(
    misbehaving, webapp, gcs, platform, monkeypatch
):
    """Nothing listens on the endpoint. google-cloud-storage retries a connection error for
    120 s by itself; the test shortens that deadline (Google's object, not ours) to 2 s."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    monkeypatch.setattr(DEFAULT_RETRY, "_timeout", 2.0)
    monkeypatch.setattr(DEFAULT_RETRY, "_deadline", 2.0)
    dead = f"http://127.0.0.1:{free_port()}"
    use_bucket(gcs, "cs-outputs", monkeypatch, endpoint=dead)
    with pytest.raises(OutputsNotStored, match="did not answer.*storage.googleapis.com"):
        store_zips({"x_renderable.zip": b"PK"})
    assert "Cloud Storage did not answer" in fail_of_a_simulation(webapp)


def test_a_missing_bucket_with_the_web_app_down_keeps_the_fail(
    misbehaving, webapp, cs_home, gcs, platform, monkeypatch
):
    """Both faults at once: the FAIL naming the bucket is kept for `prefect-cs results resend`."""
    import json

    use_bucket(gcs, "cs-no-such-bucket", monkeypatch)
    webapp.fail_next = 3  # every attempt (CS_NOTIFY_ATTEMPTS=3 in the tests) is answered 503
    task_id, state = run_ok()
    assert state.is_failed() and "NOT notified, result kept" in state.message
    assert webapp.accepted("/outputs/api/") == []
    (kept,) = (cs_home / "undelivered").glob(f"{task_id}-*.json")
    record = json.loads(kept.read_text())
    kept.unlink()  # not left for other tests' resends
    assert record["path"] == "/outputs/api/" and record["payload"]["status"] == "FAIL"
    assert "gcloud storage buckets create gs://cs-no-such-bucket" in record["payload"]["traceback"]


# ---- zero hand steps: `webapp set --outputs-bucket`, the stack's worker, C/S's own reader ----


def webapp_set(webapp, *flags: str):
    from prefect_cs.cli.main import app
    from typer.testing import CliRunner

    argv = ["webapp", "set", "--url", webapp.url, "--token-stdin", *flags]
    return CliRunner().invoke(app, argv, input=webapp.token + "\n")


def test_webapp_set_points_a_workers_runs_at_the_bucket_cs_storage_reads(
    misbehaving, webapp, gcs, platform, monkeypatch, tmp_path
):
    """As a C/S operator: one `webapp set` names the web app's bucket and key; a simulation
    submitted as the web app does and run by the stack's own process worker (its environment
    built by stack_parts, carrying STORAGE_EMULATOR_HOST) lands in the bucket, and C/S's
    reader, cs_storage.read, reads every output back from what the web app was PUT."""
    import json

    import cs_storage
    from prefect_cs.cli.main import app
    from prefect_cs.services.stack_parts import process_worker
    from typer.testing import CliRunner

    bucket = gcs.emulator.create_bucket(f"cs-webapp-{uuid.uuid4().hex[:12]}")
    key = tmp_path / "key.json"
    key.write_text(json.dumps(gcs.info))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.emulator.url)
    monkeypatch.delenv("CS_OUTPUTS_BLOCK", raising=False)
    result = webapp_set(webapp, "--outputs-bucket", bucket, "--gcp-credentials-file", str(key))
    assert result.exit_code == 0, result.output
    assert "outputs go to gcs-bucket/cs-outputs" in result.output
    worker = process_worker()
    worker.start()
    try:
        adjustment = json.dumps({"control": {"behavior": [{"value": "ok"}]}})
        argv = ["simulate", "tests/Misbehaving", "-a", adjustment, "--wait", "300"]
        done = CliRunner().invoke(app, argv)
    finally:
        worker.stop()
    assert done.exit_code == 0, done.output
    (body,) = [r.body for r in webapp.accepted("/outputs/api/")]
    assert body["status"] == "SUCCESS"
    assert set(gcs.emulator.object_names(bucket)) >= {
        body["outputs"][c]["ziplocation"] for c in ("renderable", "downloadable")
    }
    monkeypatch.setattr(cs_storage, "BUCKET", bucket)  # C/S's reader takes it from BUCKET
    read = cs_storage.read(body["outputs"])
    for category in ("renderable", "downloadable"):
        sent = body["outputs"][category]["outputs"]
        assert [o["title"] for o in read[category]] == [o["title"] for o in sent]
        assert all(o["data"] not in (None, b"", "") for o in read[category])


def test_webapp_set_refuses_a_bucket_that_does_not_exist_and_keeps_the_block(
    webapp, gcs, platform, monkeypatch, tmp_path
):
    import json

    from prefect_cs.blocks.webapp import WebApp

    key = tmp_path / "key.json"
    key.write_text(json.dumps(gcs.info))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.emulator.url)
    result = webapp_set(
        webapp, "--outputs-bucket", "cs-nowhere", "--gcp-credentials-file", str(key)
    )
    assert result.exit_code == 1
    assert "'cs-nowhere'" in result.output and "gcloud storage buckets create" in result.output
    assert WebApp.load("default", _sync=True).outputs_block is None  # nothing changed
    key.write_text("{not json")
    result = webapp_set(webapp, "--outputs-bucket", "b", "--gcp-credentials-file", str(key))
    assert result.exit_code == 1 and "not a readable JSON key" in result.output
    assert "{not json" not in result.output


def test_webapp_set_keeps_the_outputs_choice_until_told_otherwise(
    webapp, gcs, bucket, platform, monkeypatch
):
    """A later `webapp set` (a new token) must not send outputs back to the local folder."""
    from prefect_cs.blocks.webapp import WebApp
    from prefect_cs.flows.storage import outputs_block

    monkeypatch.delenv("CS_OUTPUTS_BLOCK", raising=False)
    assert webapp_set(webapp, "--outputs-block", f"gcs-bucket/{BLOCK}").exit_code == 0
    assert webapp_set(webapp).exit_code == 0
    assert WebApp.load("default", _sync=True).outputs_block == f"gcs-bucket/{BLOCK}"
    assert outputs_block()[0] == f"gcs-bucket/{BLOCK}"
    monkeypatch.setenv("CS_OUTPUTS_BLOCK", "local-file-system/cs-outputs")  # the operator's
    assert outputs_block() == ("local-file-system/cs-outputs", "CS_OUTPUTS_BLOCK")
    monkeypatch.delenv("CS_OUTPUTS_BLOCK")
    assert webapp_set(webapp, "--outputs-block", "default").exit_code == 0
    assert outputs_block()[0] == "local-file-system/cs-outputs"
    result = webapp_set(webapp, "--outputs-block", "gcs-bucket/no-such-block")
    assert result.exit_code == 1 and "no outputs storage block" in result.output
